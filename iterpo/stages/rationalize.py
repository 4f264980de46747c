"""rationalize: a prompt the policy could not solve is asked again with its reference answer as a hint.

STaR's rationalization (Zelikman et al. 2022, "STaR: Bootstrapping Reasoning
With Reasoning", section 3.2). For each prompt none of whose responses the
run's judge accepts (every verdict below ``threshold``) and that has a
reference answer, the policy the round starts from writes ``samples`` more
responses to the prompt with ``hint`` added to its last user message. Those the
judge accepts are recorded as responses to the prompt alone (source
``rationalize``, no context): training never sees the hint, so the policy learns
to give the right answer without it. A prompt the policy cannot yet solve thus
still gives a correct response to imitate, and with a pairing of correct
against incorrect responses (best_vs_worst, correct_vs_incorrect) a pair, where
sampling alone gives none: early in a run those are most of the prompts.

The responses are drawn from the hinted prompt, not the prompt the loss
conditions on: they are off-policy data, as STaR's rationalizations are. The
hint shows the prompt's ``answer`` as the task gives it (what its verifier
checks against): a final answer for arithmetic and word problems, but a spec or
tests for some tasks, for which a ``hint`` of other words fits better. Each
hinted draw's seed derives from (run seed, round, stage name, prompt id, its
number among the prompt's ``samples`` draws), so it is the same under any
batching, and a finished shard of ``sampling.shard_size``
prompts survives a crash. The verdicts asked here go through the run's cache,
so the judge stage after this one finds them there.

The stage writes the responses it read followed by the accepted ones, so the
judge and pair stages after it see both.
"""

from __future__ import annotations

import string
import time
from dataclasses import dataclass

from iterpo.errors import ConfigError, DataError
from iterpo.records import Prompt, Rollout, by_prompt
from iterpo.sampling import derive_seed
from iterpo.stages.base import Stage, register_stage
from iterpo.stages.verdicts import Verdicts, in_shards

HINT = "\n(Hint: the answer is {answer}.)"


@register_stage("rationalize")
@dataclass
class Rationalize(Stage):
    """Hinted responses to the round's unsolved prompts, kept when the judge accepts them."""

    reads = ("rollouts",)
    writes = {"rollouts": "rationalized_rollouts.parquet"}

    samples: int = 4
    """Hinted responses drawn per unsolved prompt (sampling.temperature, top_p, max_new_tokens)."""
    hint: str = HINT
    """Added to the end of the prompt's last user message; ``{answer}`` is replaced by its reference answer."""
    threshold: float | None = None
    """A prompt is unsolved when every response scores below this, and a hinted response is kept when it scores
    at least this (default: pairing.threshold)."""
    source: str = "rationalize"
    """What the kept responses are recorded as coming from."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples < 1:
            raise ValueError(f"samples must be at least 1, got {self.samples}")
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(self.hint) if f is not None}
            self.hint.format(answer="")
        except Exception as e:  # a stray brace, an index, an attribute of the answer
            raise ValueError(
                f"hint {self.hint!r}: write {{answer}} where the answer goes, braces as {{{{ }}}}: {e}"
            ) from None
        if fields != {"answer"}:
            raise ValueError(
                f"hint must contain {{answer}}, where the reference answer goes, and no other field; got {self.hint!r}"
            )

    def fits(self, plan) -> None:
        if not plan.judge.pointwise:
            raise ConfigError(
                f"round.stages: {self.label} reads each response's verdict; judge {plan.judge.name!r} compares "
                "responses instead of scoring each one"
            )
        if plan.environment is not None:
            raise ConfigError(
                f"round.stages: {self.label} samples plain responses; it does not run episodes with an environment"
            )
        if plan.config.sampling.exhaustive:
            raise ConfigError(
                f"round.stages: {self.label} draws hinted responses, which have no probability under the policy; "
                "sampling.exhaustive weighs every response by it"
            )
        if plan.train_prompts and not any(p.answer is not None for p in plan.train_prompts):
            raise ConfigError(
                f"round.stages: {self.label} hints at each prompt's reference answer, and no training prompt of task "
                f"{plan.config.task.name!r} has one; use a task (or a prompt file) whose prompts carry answers"
            )

    def run(self, ctx, r):
        prompts = ctx.prompts_of_round(r)
        if not any(p.answer is not None for p in prompts):
            raise DataError(
                f"round.stages: {self.label} hints at each prompt's reference answer, and no prompt of round {r} "
                f"has one (task {ctx.config.task.name!r}); use a task whose prompts carry answers"
            )
        of_prompt = by_prompt(ctx.read(r, self.input("rollouts"), Rollout))
        work = Hinting(self, ctx, r)
        start = time.perf_counter()
        rows, resumed = in_shards(
            ctx,
            r,
            ctx.store.path(r, self.file("rollouts")),
            "rationalizing",
            [(p, of_prompt.get(p.prompt_id, [])) for p in prompts],
            work.shard,
            work.sampler,
            work.cache,
            work.asking,
            "which prompts are unsolved would be guessed",
        )
        seconds = time.perf_counter() - start
        for shard in resumed:  # shards a crashed run finished: their unsolved prompts, from the cached verdicts
            work.unsolved += len(work.unsolved_of(shard))
        read = {(x.prompt_id, x.source, x.sample_idx) for ros in of_prompt.values() for x in ros}
        kept = [x for x in rows if (x.prompt_id, x.source, x.sample_idx) not in read]
        return {
            "unsolved": work.unsolved,
            "hinted": work.unsolved * self.samples,
            "kept": len(kept),
            "prompts_kept": len({x.prompt_id for x in kept}),
            "new_tokens": work.new_tokens,  # drawn in this process (a resume does not redraw finished shards)
            "tokens_per_s": round(work.new_tokens / seconds, 1) if seconds > 0 else 0.0,
            "failed_verdicts": work.asking.failed,
        }


class Hinting:
    """One round's rationalization: the sampler of the policy the round starts from and the judge, shard by shard;
    counts the unsolved prompts and the hinted responses' tokens for the stage's figures."""

    def __init__(self, stage: Rationalize, ctx, r: int):
        self.stage, self.ctx, self.r = stage, ctx, r
        self.sampler = ctx.sampler(r - 1)
        self.cache = ctx.judge_cache()
        ctx.plan.judge.setup(ctx.judge_context(r, self.cache))
        self.asking = Verdicts(self.cache, "rationalization")
        t = stage.threshold
        self.threshold = ctx.config.pairing.threshold if t is None else t
        self.tag = () if stage.label == "rationalize" else (stage.label,)  # a second such stage: its own seeds
        self.unsolved = self.new_tokens = 0

    def solved(self, prompt: Prompt, rollouts: list[Rollout]) -> bool:
        """Whether some response of prompt scores at least the threshold (or none could be judged: nothing to say)."""
        verdicts = [j for j in self.asking(self.ctx.plan.judge, prompt, rollouts) if not j.failed]
        return not verdicts or any(j.score >= self.threshold for j in verdicts)

    def hinted_ids(self, prompt: Prompt) -> list[int]:
        """The prompt's tokens with the hint at the end of its last user message."""
        messages = [dict(m) for m in prompt.messages]
        last = max(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[last]["content"] += self.stage.hint.format(answer=prompt.answer)
        return self.ctx.encode(messages)

    def unsolved_of(self, items: list[tuple[Prompt, list[Rollout]]]) -> list[tuple[Prompt, list[Rollout]]]:
        """The prompts (with their responses) that have a reference answer and no response the judge accepts."""
        return [(p, ros) for p, ros in items if ros and p.answer is not None and not self.solved(p, ros)]

    def shard(self, items: list[tuple[Prompt, list[Rollout]]]) -> list[Rollout]:
        """The responses of a shard's prompts, each prompt's followed by its accepted hinted responses."""
        s, seed, k_max = self.ctx.config.sampling, self.ctx.config.run.seed, self.stage.samples
        todo = self.unsolved_of(items)
        self.unsolved += len(todo)
        seeds = [
            [derive_seed(seed, self.r, "rationalize", *self.tag, p.prompt_id, k) for k in range(k_max)] for p, _ in todo
        ]
        outs = (
            self.sampler.generate(
                [self.hinted_ids(p) for p, _ in todo], seeds, s.temperature, s.top_p, s.max_new_tokens, s.batch_size
            )
            if todo
            else []
        )
        kept: dict[str, list[Rollout]] = {}
        for (p, ros), prompt_seeds, drawn in zip(todo, seeds, outs):
            first = max(x.sample_idx for x in ros) + 1
            made = [
                self.ctx.response(p.prompt_id, first + k, self.r, prompt_seeds[k], ids, reason, self.stage.source)
                for k, (ids, reason) in enumerate(drawn)
            ]
            self.new_tokens += sum(len(x.token_ids) for x in made)
            verdicts = self.asking(self.ctx.plan.judge, p, made)
            kept[p.prompt_id] = [x for x, j in zip(made, verdicts) if not j.failed and j.score >= self.threshold]
        return [x for p, ros in items for x in ros + kept.get(p.prompt_id, [])]
