"""The ``synthetic_users`` task: personalized preferences (FSPO, Singh et al. 2025).

Synthetic users want different formats or lengths of the same kind of reply: a terse one, a long one, all
lower case, JSON, a fixed opening or closing word. A prompt is one user's request for a short piece of
writing, which never states what the user wants; before it come ``task.shots`` of that user's labelled
preferences on other topics (iterpo.tasks.base.few_shot_request), a reply that met the user's wishes and one
that did not, so the policy can only tell what to write by reading them. The answer is the user's constraint
spec, which the ``constraints`` judge checks (the score is the share met), and ``Prompt.user`` names the user.

Held-out prompts are the training users' new requests (new topics, new shots). The shifted set
(``Task.shifted_prompts``) asks for users no training prompt came from: what the analyses' shifted accuracy
measures is whether the policy learned to read preferences from the shots, not the eight users by heart.
"""

from __future__ import annotations

import json
import random
from typing import Any

from iterpo.errors import ConfigError
from iterpo.records import Prompt
from iterpo.tasks.base import few_shot_request, register_task
from iterpo.tasks.constraints import CHECKS, FORMS, TOPICS
from iterpo.tasks.generated import EVAL_SEED, GeneratedTask, Item

# user -> what they want, as a constraint spec (iterpo.tasks.constraints.CHECKS)
USERS: dict[str, dict[str, Any]] = {
    "terse": {"max_words": 12},
    "expansive": {"min_words": 25},
    "lowercase": {"lowercase": True},
    "json": {"json": True},
    "thankful": {"ends_with": "Thanks."},
    "candid": {"starts_with": "Honestly"},
    "terse_lowercase": {"max_words": 12, "lowercase": True},
    "reasoned": {"must_include": ["because"], "max_words": 30},
}
HELD_OUT_USERS: dict[str, dict[str, Any]] = {  # users of the shifted set only
    "storyteller": {"starts_with": "Imagine", "ends_with": "The end."},
    "brief_json": {"json": True, "max_words": 15},
}

SENTENCES = [
    "{T} has a lot to offer.",
    "Many people enjoy {t} in their own way.",
    "There is always something new to learn about {t}.",
    "I think {t} makes everyday life better.",
    "It is worth taking time for {t}.",
    "A little {t} can change a whole week.",
    "Some of my best memories involve {t}.",
    "Friends often ask me about {t}.",
]


def meets(text: str, spec: dict) -> bool:
    return all(CHECKS[k][0](text, v) for k, v in spec.items())


BECAUSE = "I like it because it helps."


def _words(text: str) -> int:
    return len(text.split())


def compose(topic: str, spec: dict, rng: random.Random) -> str:
    """A reply about topic written to meet spec: whole template sentences, as many as its length wishes allow,
    then shaped by each other constraint (the opening and closing words, a keyword, lower case, JSON)."""
    big = topic[0].upper() + topic[1:]
    pool = [s.format(T=big, t=topic) for s in rng.sample(SENTENCES, len(SENTENCES))]
    fixed = [spec.get("starts_with", ""), spec.get("ends_with", ""), '{"reply":' if spec.get("json") else ""]
    extra = sum(map(_words, fixed)) + (_words(BECAUSE) if "must_include" in spec else 0)  # words besides the body
    if "min_words" in spec:
        body: list[str] = []
        while sum(map(_words, body)) + extra < spec["min_words"]:
            body.append(pool[len(body) % len(pool)])
    else:
        body = pool[: rng.choice([1, 2])]
    if "max_words" in spec:
        room, kept = spec["max_words"] - extra, list[str]()
        for sentence in body:
            if sum(map(_words, kept)) + _words(sentence) <= room:
                kept.append(sentence)
        body = kept or [f"{big} is great."]
    text = " ".join(body) + (f" {BECAUSE}" if "must_include" in spec else "")
    if "starts_with" in spec:
        text = f"{spec['starts_with']}, {text if text.startswith('I ') else text[0].lower() + text[1:]}"
    if "ends_with" in spec:
        text = f"{text} {spec['ends_with']}"
    if spec.get("lowercase"):
        text = text.lower()
    if spec.get("json"):
        text = json.dumps({"reply": text})
    return text


def shot(topic: str, form: str, spec: dict, rng: random.Random) -> dict[str, str]:
    """One labelled preference of the user with spec: a reply meeting it, and one written for another user's
    wishes that does not."""
    chosen = compose(topic, spec, rng)
    others = [s for s in [*USERS.values(), *HELD_OUT_USERS.values()] if s != spec]
    for _ in range(100):
        rejected = compose(topic, rng.choice(others), rng)
        if not meets(rejected, spec):
            break
    else:  # pragma: no cover (every user's wishes differ from another's)
        raise AssertionError(f"no reply violates {spec}")
    if not meets(chosen, spec):  # pragma: no cover (compose writes to the spec; tests check every user)
        raise AssertionError(f"composed {chosen!r} does not meet {spec}")
    return {"prompt": f"Write {form} about {topic}.", "chosen": chosen, "rejected": rejected}


@register_task("synthetic_users")
class SyntheticUsers(GeneratedTask):
    name = "synthetic_users"
    default_judge = "constraints"

    def __init__(self, config, seed: int):
        if config.shots < 1:
            raise ConfigError("task synthetic_users needs task.shots >= 1: the shots are how a user's wishes are known")
        self.shots = config.shots
        super().__init__(config, seed)

    def item(self, rng: random.Random, users: dict[str, dict]) -> Item:
        """One user's request, after that user's labelled preferences on other topics."""
        user = rng.choice(sorted(users))
        spec = users[user]
        topic, form = rng.choice(TOPICS), rng.choice(FORMS)
        shots = [
            shot(t, rng.choice(FORMS), spec, rng) for t in rng.sample([t for t in TOPICS if t != topic], self.shots)
        ]
        text = few_shot_request(f"Write {form} about {topic}.", shots)
        key = (user, topic, form, tuple(s["prompt"] for s in shots))
        return Item(key, text, json.dumps(spec, sort_keys=True), user)

    def make(self, rng: random.Random) -> Item:
        return self.item(rng, USERS)

    def shifted_prompts(self) -> list[Prompt]:
        """Requests of users no training prompt came from, with their shots (as many as the held-out prompts)."""
        n = min(self.config.eval_size, 100)
        return [p for _, p in self._generate("shifted", n, EVAL_SEED, set(), lambda g: self.item(g, HELD_OUT_USERS))]
