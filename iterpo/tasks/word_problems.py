"""The ``word_problems`` task: multi-step grade-school problems generated from templates, with exact answers.

Each template draws names, objects and numbers, and computes its answer in
whole numbers (every division is exact, every intermediate count positive).
Problems take two or three operations; the default judge reads the last
number of the response.
"""

from __future__ import annotations

import random

from iterpo.tasks.base import register_task
from iterpo.tasks.generated import GeneratedTask, Item

NAMES = [
    "Ana",
    "Ben",
    "Chloe",
    "Dev",
    "Elena",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jonas",
    "Kemi",
    "Liam",
    "Mei",
    "Noah",
]
THINGS = ["apples", "marbles", "stickers", "pencils", "cookies", "stamps", "shells", "cards"]
SUFFIX = " Give the final answer as a number at the end."


def _shopping(rng):
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    a, packs, per, given = rng.randint(3, 40), rng.randint(2, 6), rng.randint(2, 12), rng.randint(1, 20)
    total = a + packs * per
    given = min(given, total - 1)
    text = (
        f"{name} has {a} {thing}. {name} buys {packs} packs with {per} {thing} in each pack, then gives "
        f"{given} {thing} to a friend. How many {thing} does {name} have now?"
    )
    return ("shopping", name, thing, a, packs, per, given), text, total - given


def _travel(rng):
    s1, h1, s2, h2 = rng.randint(20, 90), rng.randint(1, 5), rng.randint(20, 90), rng.randint(1, 5)
    vehicle = rng.choice(["train", "bus", "car", "truck"])
    text = (
        f"A {vehicle} travels at {s1} km per hour for {h1} hours, then at {s2} km per hour for {h2} hours. "
        "How many kilometres does it travel in total?"
    )
    return ("travel", vehicle, s1, h1, s2, h2), text, s1 * h1 + s2 * h2


def _wages(rng):
    name = rng.choice(NAMES)
    wage, hours, days = rng.randint(8, 30), rng.randint(2, 8), rng.randint(2, 6)
    earned = wage * hours * days
    spent = rng.randint(1, earned - 1)
    text = (
        f"{name} earns {wage} dollars per hour and works {hours} hours a day for {days} days, then spends "
        f"{spent} dollars. How many dollars does {name} have left?"
    )
    return ("wages", name, wage, hours, days, spent), text, earned - spent


def _sharing(rng):
    thing = rng.choice(THINGS)
    friends, each, extra = rng.randint(2, 9), rng.randint(2, 15), rng.randint(1, 30)
    total = friends * each
    text = (
        f"There are {total + extra} {thing} in a jar. {extra} are taken out, and the rest are shared equally "
        f"among {friends} friends. How many {thing} does each friend get?"
    )
    return ("sharing", thing, friends, each, extra), text, each


def _reading(rng):
    name = rng.choice(NAMES)
    per_day, days = rng.randint(5, 40), rng.randint(2, 9)
    pages = per_day * days + rng.randint(1, 200)
    text = (
        f"{name}'s book has {pages} pages. {name} reads {per_day} pages every day for {days} days. "
        "How many pages are left to read?"
    )
    return ("reading", name, pages, per_day, days), text, pages - per_day * days


def _boxes(rng):
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    rows, cols, boxes, eaten = rng.randint(2, 8), rng.randint(2, 8), rng.randint(2, 5), rng.randint(1, 10)
    total = rows * cols * boxes
    eaten = min(eaten, total - 1)
    text = (
        f"A box holds {rows} rows of {cols} {thing}. {name} fills {boxes} boxes, then loses {eaten} {thing}. "
        f"How many {thing} are left in the boxes?"
    )
    return ("boxes", name, thing, rows, cols, boxes, eaten), text, total - eaten


TEMPLATES = [_shopping, _travel, _wages, _sharing, _reading, _boxes]


@register_task("word_problems")
class WordProblems(GeneratedTask):
    name = "word_problems"
    default_judge = "exact_answer"

    def make(self, rng: random.Random) -> Item:
        key, text, answer = rng.choice(TEMPLATES)(rng)
        assert answer > 0 and answer == int(answer)
        return Item(key, text + SUFFIX, str(answer))
