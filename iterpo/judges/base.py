"""The judge contract: (prompt, rollouts) -> one Judgement per rollout."""

from __future__ import annotations

from iterpo.records import Judgement, Prompt, Rollout
from iterpo.registry import Registry


class Judge:
    name: str = "judge"

    def judge(self, prompt: Prompt, rollouts: list[Rollout]) -> list[Judgement]:  # pragma: no cover
        raise NotImplementedError


JUDGES: Registry[type] = Registry("judge")
register_judge = JUDGES.register


def build_judge(config) -> Judge:
    return JUDGES.get(config.name)()
