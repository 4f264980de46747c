"""The ``constraints`` task: open-ended requests with format constraints a program can check (IFEval-style).

Each prompt asks for a short piece of writing on a topic with one to three
constraints drawn from: a word limit, a minimum length, a keyword to include,
a word to avoid, all lower case, a required first or last word, or JSON
output. The answer is the constraint spec the ``constraints`` judge reads;
the score is the fraction of constraints met.
"""

from __future__ import annotations

import json
import random
import re

from iterpo.tasks.base import register_task
from iterpo.tasks.generated import GeneratedTask, Item


def _words(text: str) -> int:
    return len(text.split())


def _is_json(text: str) -> bool:
    body = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*\n(.*?)```", body, re.DOTALL)
    try:
        json.loads(fence.group(1) if fence else body)
        return True
    except ValueError:
        return False


# the constraints a spec may hold: name -> (check(response, value) -> bool, the type of value); the constraints
# judge scores by them, and tasks check with them the texts they write
CHECKS = {
    "min_words": (lambda t, v: _words(t) >= v, int),
    "max_words": (lambda t, v: _words(t) <= v, int),
    "min_chars": (lambda t, v: len(t) >= v, int),
    "max_chars": (lambda t, v: len(t) <= v, int),
    "must_include": (lambda t, v: all(k.lower() in t.lower() for k in v), list),
    "forbidden": (lambda t, v: not any(re.search(rf"\b{re.escape(k)}\b", t, re.IGNORECASE) for k in v), list),
    "regex": (lambda t, v: re.search(v, t) is not None, str),
    "starts_with": (lambda t, v: t.strip().startswith(v), str),
    "ends_with": (lambda t, v: t.strip().endswith(v), str),
    "json": (lambda t, v: _is_json(t) == v, bool),
    "lowercase": (lambda t, v: (t == t.lower()) == v, bool),
}


TOPICS = [
    "the ocean",
    "a rainy day",
    "learning to cook",
    "city parks",
    "the history of bicycles",
    "honeybees",
    "a favourite book",
    "morning routines",
    "mountain hiking",
    "public libraries",
    "solar power",
    "board games",
    "the moon",
    "coffee",
    "volunteering",
    "trains",
    "winter",
    "gardening",
    "music practice",
    "recycling",
]
FORMS = ["a short paragraph", "a brief note", "a short description", "two or three sentences", "a short message"]
KEYWORDS = ["because", "important", "together", "quiet", "simple", "future", "bright", "careful"]
AVOID = ["very", "really", "nice", "good", "thing"]
FIRST = ["Today", "Imagine", "Honestly", "Yesterday"]
LAST = ["Thanks.", "Enjoy!", "The end."]


def _constraint(kind: str, rng: random.Random) -> tuple[dict, str]:
    """One constraint: (its spec entries, how the prompt asks for it)."""
    if kind == "max_words":
        n = rng.choice([15, 20, 30, 40, 50])
        return {"max_words": n}, f"Use at most {n} words."
    if kind == "min_words":
        n = rng.choice([10, 15, 20])
        return {"min_words": n}, f"Use at least {n} words."
    if kind == "must_include":
        w = rng.choice(KEYWORDS)
        return {"must_include": [w]}, f'Include the word "{w}".'
    if kind == "forbidden":
        w = rng.choice(AVOID)
        return {"forbidden": [w]}, f'Do not use the word "{w}".'
    if kind == "lowercase":
        return {"lowercase": True}, "Write everything in lower case letters."
    if kind == "starts_with":
        w = rng.choice(FIRST)
        return {"starts_with": w}, f'Start your reply with the word "{w}".'
    if kind == "ends_with":
        w = rng.choice(LAST)
        return {"ends_with": w}, f'End your reply with "{w}".'
    return {"json": True}, "Format the whole reply as a JSON object."


KINDS = ["max_words", "min_words", "must_include", "forbidden", "lowercase", "starts_with", "ends_with", "json"]
CLASHES = [
    {"max_words", "min_words"},
    {"json", "starts_with"},
    {"json", "ends_with"},
    {"json", "lowercase"},
    {"lowercase", "starts_with"},
    {"lowercase", "ends_with"},
]  # pairs that cannot both hold, or read oddly


@register_task("constraints")
class Constraints(GeneratedTask):
    name = "constraints"
    default_judge = "constraints"

    def make(self, rng: random.Random) -> Item:
        topic, form = rng.choice(TOPICS), rng.choice(FORMS)
        while True:
            kinds = sorted(rng.sample(KINDS, rng.randint(1, 3)))
            if not any(c <= set(kinds) for c in CLASHES):
                break
        spec, asks = {}, []
        for kind in kinds:
            entry, ask = _constraint(kind, rng)
            spec.update(entry)
            asks.append(ask)
        text = f"Write {form} about {topic}. " + " ".join(asks)
        return Item((topic, form, json.dumps(spec, sort_keys=True)), text, json.dumps(spec))
