"""Self-judging (Yuan et al. 2024, "Self-Rewarding Language Models"): the policy scores its own responses.

The policy that sampled the round reads an additive 5-point rubric (a point
for each of: relevant, addresses most of the request, answers the basic
question usefully, clear and complete, expert-quality) and ends with
"Score: N". The judge samples ``samples`` such evaluations per response and
averages the scores it can read; a response none of whose evaluations gives
a score is recorded as failed, with the evaluator's reply. Verdicts are cached
per (policy round, prompt, response): the judge changes every round.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass

from iterpo.judges.base import Judge, register_judge
from iterpo.records import Judgement, Prompt, Rollout

RUBRIC = """Evaluate the response to the user's question below with this additive 5-point scale.
Start at 0 and add points:
- 1 point if the response is relevant and gives some information related to the question.
- 1 more point if it addresses a substantial part of the question, even if not completely.
- 1 more point if it answers the basic elements of the question in a useful way.
- 1 more point if it is clearly written, directly addresses the question and is complete.
- 1 more point if it is flawless: accurate, concise and exactly what an expert would write.

Question: {prompt}

Response: {response}

Explain your evaluation briefly, then finish with the line "Score: <points>"."""

# "Score: 4", "**Score:** 4", "a score of 4", "score is 4", "4/5", "4 out of 5": the last one written wins.
_SCORE = re.compile(
    r"score(?:\s+(?:of|is))?\s*[:=]?[\s*]*(\d+(?:\.\d+)?)|(\d+(?:\.\d+)?)\s*(?:/|out of)\s*5\b", re.IGNORECASE
)


def read_score(reply: str, top: float = 5.0) -> float | None:
    """The last score the reply gives ("Score: N", "a score of N", "N/5"), if 0 <= N <= top."""
    found = [float(a or b) for a, b in _SCORE.findall(reply)]
    return found[-1] if found and 0 <= found[-1] <= top else None


@register_judge("self_judge")
@dataclass
class SelfJudge(Judge):
    """The policy scores its own responses on the additive 5-point rubric, averaged over samples (Self-Rewarding)."""

    name = "self_judge"
    explains = True
    uses_policy = True
    samples: int = 3
    """Evaluations sampled per response; their readable scores are averaged (the paper: 3)."""
    temperature: float = 0.7
    max_new_tokens: int = 128
    """Length of each evaluation."""
    template: str = RUBRIC
    """The evaluation prompt, with {prompt} and {response}."""
    batch_size: int = 64
    volatile_options = ("batch_size",)

    def __post_init__(self):
        if self.samples < 1 or self.temperature <= 0 or self.max_new_tokens < 4 or self.batch_size < 1:
            raise ValueError("options need samples >= 1, temperature > 0, max_new_tokens >= 4, batch_size >= 1")
        if "{response}" not in self.template:
            raise ValueError("option template must contain {response}")

    def judge(self, prompt: Prompt, rollouts: list[Rollout]) -> list[Judgement]:
        from iterpo.models.chat import encode_prompt
        from iterpo.sampling import derive_seed, generate

        ctx = self.context
        if ctx is None or ctx.policy is None:
            raise RuntimeError("self_judge needs the round's policy (JudgeContext.policy)")
        tok = ctx.tokenizer
        asks = [
            encode_prompt(
                tok,
                [{"role": "user", "content": self.template.format(prompt=prompt.text, response=r.text)}],
                ctx.system_prompt,
            )
            for r in rollouts
        ]
        # Each evaluation's seed: (run seed, round, prompt, the response's source unless it is the round's own
        # sample, its index, the evaluation). Responses of two sources with one index must not share the judge's draws.
        seeds = [
            [
                derive_seed(
                    ctx.seed,
                    ctx.round,
                    "self-judge",
                    r.prompt_id,
                    *((r.source,) if r.source != "policy" else ()),
                    r.sample_idx,
                    s,
                )
                for s in range(self.samples)
            ]
            for r in rollouts
        ]
        outs = generate(ctx.policy(), tok, asks, seeds, self.temperature, 1.0, self.max_new_tokens, self.batch_size)
        verdicts = []
        for r, evaluations in zip(rollouts, outs):
            replies = [tok.decode(ids, skip_special_tokens=True) for ids, _ in evaluations]
            scores = [s for s in map(read_score, replies) if s is not None]
            if not scores:
                verdicts.append(
                    Judgement(
                        r.prompt_id,
                        r.sample_idx,
                        self.name,
                        0.0,
                        f"no score in {len(replies)} evaluations, e.g. {replies[0][-80:]!r}",
                        failed=True,
                    )
                )
                continue
            mean = sum(scores) / len(scores)
            verdicts.append(
                Judgement(
                    r.prompt_id,
                    r.sample_idx,
                    self.name,
                    mean,
                    f"scores {scores} from {len(replies)} evaluations",
                    uncertainty=statistics.pstdev(scores),
                    samples=scores,
                    rationale=next(x for x in replies if read_score(x) is not None).strip(),
                )
            )
        return verdicts
