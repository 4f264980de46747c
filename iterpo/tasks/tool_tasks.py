"""Tasks that need a tool: ``big_arithmetic`` (numbers too large to multiply in one's head; a calculator or
Python makes them easy) and ``town_facts`` (questions about made-up towns, answerable only by searching the
bundled document collection, iterpo.tasks.corpus).

Both are generated from templates with exact whole-number answers, so the
``exact_answer`` verifier checks them; ``town_facts`` holds out whole towns,
so held-out accuracy measures looking facts up, not remembering them.
"""

from __future__ import annotations

import random

from iterpo.tasks.base import register_task
from iterpo.tasks.corpus import FACTS, towns
from iterpo.tasks.generated import GeneratedTask, Item

SUFFIX = " Give the final answer as a number at the end."


def _product_sum(rng):
    a, b, c = rng.randint(100, 9999), rng.randint(100, 999), rng.randint(1000, 99999)
    return ("product_sum", a, b, c), f"What is {a} * {b} + {c}?", a * b + c


def _factory(rng):
    a, b, d = rng.randint(120, 990), rng.randint(12, 99), rng.randint(3, 30)
    c = rng.randint(1, a * b * d - 1)
    text = (
        f"A factory packs {a} boxes a day with {b} bolts in each box. After {d} days it ships {c} bolts. "
        "How many bolts are left?"
    )
    return ("factory", a, b, d, c), text, a * b * d - c


def _savings(rng):
    wage, hours, weeks = rng.randint(17, 89), rng.randint(21, 48), rng.randint(11, 52)
    rent = rng.randint(100, wage * hours * weeks // 2)
    text = (
        f"Someone earns {wage} dollars an hour for {hours} hours a week, for {weeks} weeks, and pays {rent} "
        "dollars of rent in that time. How many dollars are left?"
    )
    return ("savings", wage, hours, weeks, rent), text, wage * hours * weeks - rent


def _difference_of_products(rng):
    a, b, c, d = rng.randint(1000, 9999), rng.randint(10, 99), rng.randint(100, 999), rng.randint(10, 99)
    if a * b < c * d:
        a, b, c, d = c, d, a, b
    return ("difference", a, b, c, d), f"What is {a} * {b} - {c} * {d}?", a * b - c * d


TEMPLATES = [_product_sum, _factory, _savings, _difference_of_products]


@register_task("big_arithmetic")
class BigArithmetic(GeneratedTask):
    name = "big_arithmetic"
    default_judge = "exact_answer"

    def make(self, rng: random.Random) -> Item:
        key, text, answer = rng.choice(TEMPLATES)(rng)
        return Item(key, text + SUFFIX, str(answer))


@register_task("town_facts")
class TownFacts(GeneratedTask):
    """One question per town: the split's towns are its own (a held-out town never appears in training)."""

    name = "town_facts"
    default_judge = "exact_answer"
    max_misses = 20_000

    def make(self, rng: random.Random) -> Item:
        town = rng.choice(towns())
        fact = rng.choice(sorted(FACTS))
        question = FACTS[fact][0].format(town=town.name)
        return Item((town.name,), question + SUFFIX, str(getattr(town, fact)))
