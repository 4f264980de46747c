"""A small document collection about fictional towns, generated from a fixed seed (nothing is downloaded).

The facts are made up, so a model cannot know them: a question about a town is
answerable only by reading its document, which is what the retrieval task and
the retrieval environment need. Every town has one document; its facts are
numbers (founding year, inhabitants, elevation), so a verifier checks answers
exactly.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

SEED = "iterpo-corpus/1"
TOWNS = 400
_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "tr", "th"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "m"]
_REGIONS = ["Harrow", "Elmsted", "Quarry", "Morrow", "Linden", "Ashfall", "Brightwater", "Cinder"]

# (fact, question template, document sentence template)
FACTS = {
    "founded": ("In what year was the town of {town} founded?", "It was founded in {value}."),
    "inhabitants": ("How many inhabitants does the town of {town} have?", "It has {value} inhabitants."),
    "elevation": ("At what elevation, in metres, does the town of {town} lie?", "It lies at {value} metres."),
}


@dataclass(frozen=True)
class Town:
    name: str
    region: str
    river: str
    founded: int
    inhabitants: int
    elevation: int

    def document(self) -> str:
        facts = " ".join(sentence.format(value=getattr(self, key)) for key, (_, sentence) in FACTS.items())
        return f"{self.name} is a town in the {self.region} valley, on the river {self.river}. {facts}"


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))


@functools.cache
def towns() -> tuple[Town, ...]:
    """The collection's towns, the same on every machine."""
    rng = random.Random(SEED)
    names: set[str] = set()
    out: list[Town] = []
    while len(out) < TOWNS:
        name = _word(rng, rng.choice([2, 3])).capitalize()
        if name in names:
            continue
        names.add(name)
        out.append(
            Town(
                name,
                rng.choice(_REGIONS),
                _word(rng, 2).capitalize(),
                rng.randint(1100, 1950),
                rng.randint(200, 90_000),
                rng.randint(5, 2400),
            )
        )
    return tuple(out)


def documents() -> list[str]:
    """One document per town."""
    return [t.document() for t in towns()]
