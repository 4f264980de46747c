"""Judges of whole episodes with a tool, reading the answers the tool gave (Rollout.observations)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from iterpo.judges.base import Judge, check_range, register_judge
from iterpo.judges.verifiers import ExactAnswer, last_number
from iterpo.records import Judgement, Prompt, Rollout


@register_judge("knowledge_sufficiency")
@dataclass
class KnowledgeSufficiency(Judge):
    """Correctness of the final answer, plus a bonus when what the tool returned holds the reference answer (the
    knowledge was sufficient), minus a penalty per tool call: in the spirit of TeaRAG's rewards for
    token-efficient agentic retrieval (2025), simplified to a string check of the retrieved text.

    score = exact(final answer) + sufficiency_weight * [some answer of the tool holds the reference answer]
            - step_penalty * calls
    """

    name = "knowledge_sufficiency"

    sufficiency_weight: float = 0.5
    step_penalty: float = 0.1

    def __post_init__(self):
        check_range("sufficiency_weight", self.sufficiency_weight, 0.0, 10.0)
        check_range("step_penalty", self.step_penalty, 0.0, 10.0)

    def judge(self, prompt: Prompt, rollouts: list[Rollout]) -> list[Judgement]:
        correct = {j.sample_idx: j for j in ExactAnswer().judge(prompt, rollouts)}  # DataError on a bad answer
        expected = str(last_number(prompt.answer or ""))
        holds = re.compile(rf"(?<![\d.,]){re.escape(expected)}(?![\d])")
        out = []
        for r in rollouts:
            calls = len(r.observations)
            sufficient = any(holds.search(o.replace(",", "")) for o in r.observations)
            score = correct[r.sample_idx].score + self.sufficiency_weight * sufficient - self.step_penalty * calls
            knowledge = "sufficient" if sufficient else "insufficient"
            detail = f"answer {correct[r.sample_idx].detail}; {calls} calls; knowledge {knowledge}"
            out.append(Judgement(r.prompt_id, r.sample_idx, self.name, score, detail))
        return out
