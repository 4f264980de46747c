"""refine: the policy is shown its own answer and asked to improve it, for a number of steps.

Each revision is a response of the same prompt (source ``refine``) that names
the response it revises (``parent``) and keeps the request it was generated
after (``context``: the earlier answer as the assistant's turn, then the
request as the user's, with the judge's feedback on the earlier answer when
``feedback`` is on). A chain y0 -> y1 -> y2 revises each step's revisions
again; the pairing strategy ``refinement`` pairs along its edges.

Which answers are revised: all of them, or those the run's judge scores below
``threshold`` (asked here, through the run's cache, so the judge stage after
this one finds the verdicts there). ``perspectives`` gives each revised answer
one revision per named request (ReAgent-V's conservative / neutral /
aggressive reflections). Each revision's seed derives from (run seed, round,
prompt id, parent, perspective), so it is the same under any batching, and a
finished shard of ``sampling.shard_size`` prompts survives a crash.

The stage writes the responses it read followed by the revisions, so the judge
and pair stages after it see both.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

from iterpo.errors import ConfigError
from iterpo.models.chat import encode_prompt
from iterpo.models.loading import load_model, load_tokenizer, resolve_model_path
from iterpo.records import Judgement, Prompt, Rollout, by_prompt
from iterpo.sampling import TransformersSampler, derive_seed
from iterpo.stages.base import Stage, register_stage
from iterpo.stages.verdicts import Verdicts, in_shards
from iterpo.training.assemble import context_key

REQUEST = (
    "Check your answer above step by step. If it has a mistake, correct it; if it is right, keep it. "
    "Then give your final answer to the original question."
)
WHICH = ("all", "wrong")


def shown(answer: Rollout) -> str:
    """An answer as the revision request shows it: whole, its reasoning included (recursive refinement of the
    reasoning), as the policy wrote it."""
    return answer.text if answer.reasoning is None else f"{answer.reasoning} {answer.text}".strip()


@register_stage("refine")
@dataclass
class Refine(Stage):
    """Revisions of the round's responses by the policy the round starts from (or a reviser model), ``steps``
    times over."""

    reads = ("rollouts",)
    writes = {"rollouts": "refined_rollouts.parquet"}

    steps: int = 1
    """Revisions in a chain: step t revises the revisions of step t - 1 (the first, the sampled responses)."""
    which: str = "all"
    """'all': every response is revised; 'wrong': only those the run's judge scores below threshold, at every
    step (a chain ends when its answer is right)."""
    threshold: float | None = None
    """which: wrong: a response scoring below this is revised (default: pairing.threshold)."""
    request: str = REQUEST
    """The user's message after the earlier answer, asking for the revision."""
    perspectives: dict[str, str] = field(default_factory=dict)
    """Named requests, each revising every chosen answer once (e.g. conservative / neutral / aggressive); empty:
    one revision per answer, with ``request``."""
    feedback: bool = False
    """Add the run's judge's verdict on the earlier answer to the request (what it extracted, or why it failed:
    a failing test's error, the interpreter's traceback), as revision from tool feedback."""
    per_prompt: int | None = None
    """Revise at most this many of a prompt's sampled responses (the first in sample order that qualify)."""
    source: str = "refine"
    """What the revisions are recorded as coming from."""
    reviser: str | None = None
    """Another model writes the revisions instead of the policy (a local model directory, a .gguf file or the
    built-in model's name; a stronger model as the critic): its text is encoded again with the policy's
    tokenizer, so training reads the revisions as the policy would write them. Default: the policy the round
    starts from."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.which not in WHICH:
            raise ValueError(f"which must be one of {', '.join(WHICH)}, got {self.which!r}")
        if self.per_prompt is not None and self.per_prompt < 1:
            raise ValueError(f"per_prompt must be at least 1, got {self.per_prompt}")
        if not isinstance(self.perspectives, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in self.perspectives.items()
        ):
            raise ValueError("perspectives must map names to non-empty requests, e.g. {careful: 'Fix only ...'}")
        if not self.request.strip():
            raise ValueError("request must not be empty")

    def requests(self) -> list[tuple[str, str]]:
        """(name, request) per revision of one answer."""
        return list(self.perspectives.items()) or [("", self.request)]

    def judged(self) -> bool:
        """Whether revising needs the judge's verdicts on the answers."""
        return self.which == "wrong" or self.feedback

    def fits(self, plan) -> None:
        if self.reviser is not None:
            resolve_model_path(self.reviser, f"round.stages: {self.label}: reviser")  # a bad path fails before the run
        if self.judged() and not plan.judge.pointwise:
            raise ConfigError(
                f"round.stages: {self.label} (which: wrong, or feedback) reads each answer's verdict; judge "
                f"{plan.judge.name!r} compares responses instead of scoring each one"
            )
        if plan.environment is not None:
            raise ConfigError(
                f"round.stages: {self.label} revises plain responses; it does not run episodes with an environment"
            )

    def run(self, ctx, r):
        prompts = ctx.prompts_of_round(r)
        of_prompt = by_prompt(ctx.read(r, self.input("rollouts"), Rollout))
        work = Revising(self, ctx, r)
        start = time.perf_counter()
        rows, _ = in_shards(
            ctx,
            r,
            ctx.store.path(r, self.file("rollouts")),
            "refining",
            [(p, of_prompt.get(p.prompt_id, [])) for p in prompts],
            work.shard,
            work.sampler,
            work.cache,
            work.asking,
            "which answers to revise would be guessed",
        )
        seconds = time.perf_counter() - start
        revised = [x for x in rows if x.source == self.source]
        return {
            "revisions": len(revised),
            "new_tokens": work.new_tokens,
            "tokens_per_s": round(work.new_tokens / seconds, 1) if seconds > 0 else 0.0,
            "failed_verdicts": work.asking.failed if work.asking is not None else 0,
        }


class Revising:
    """One round's revisions: the sampler of the policy the round starts from, the judge, shard after shard."""

    def __init__(self, stage: Refine, ctx, r: int):
        self.stage, self.ctx, self.r = stage, ctx, r
        self.sampler = ctx.sampler(r - 1)
        self.tokenizer = ctx.tokenizer  # the writer's tokenizer: the policy's, or the reviser's
        if stage.reviser is not None:
            what = f"round.stages: {stage.label}: reviser"
            path = resolve_model_path(stage.reviser, what)
            self.tokenizer = load_tokenizer(path, what)
            model = functools.cache(lambda: load_model(path, ctx.config.model.dtype, what, ctx.plan.device))
            self.sampler = TransformersSampler(model, self.tokenizer)
        self.cache = ctx.judge_cache()
        self.asking: Verdicts | None = None
        if stage.judged():
            ctx.plan.judge.setup(ctx.judge_context(r, self.cache))
            self.asking = Verdicts(self.cache, "refinement")
        t = stage.threshold
        self.threshold = ctx.config.pairing.threshold if t is None else t
        self.tag = () if stage.label == "refine" else (stage.label,)  # a second refine stage: its own seeds
        self.new_tokens = 0

    def shard(self, items: list[tuple[Prompt, list[Rollout]]]) -> list[Rollout]:
        """The responses of a shard's prompts followed by their revisions, ``steps`` rounds of revising."""
        out: list[Rollout] = []
        nexts = {p.prompt_id: max((x.sample_idx for x in ros), default=-1) + 1 for p, ros in items}
        parents: list[tuple[Prompt, list[Rollout]]] = []
        for p, ros in items:
            out.extend(ros)
            parents.append((p, [x for x in ros if x.source != self.stage.source]))
        for step in range(self.stage.steps):
            chosen = [(p, self.to_revise(p, ros, first=step == 0)) for p, ros in parents]
            made = self.revise(chosen, nexts)
            out.extend(x for _, ros in made for x in ros)
            parents = made
        return out

    def to_revise(self, prompt: Prompt, rollouts: list[Rollout], first: bool) -> list[tuple[Rollout, Judgement | None]]:
        """The answers of prompt to revise at this step, each with the judge's verdict when the stage reads it."""
        verdicts: list[Judgement | None] = [None] * len(rollouts)
        if self.asking is not None and rollouts:
            verdicts = list(self.asking(self.ctx.plan.judge, prompt, rollouts))
        picked = [
            (x, j)
            for x, j in zip(rollouts, verdicts)
            if self.stage.which == "all" or (j is not None and not j.failed and j.score < self.threshold)
        ]
        if first and self.stage.per_prompt is not None:
            picked = picked[: self.stage.per_prompt]
        return picked

    def request(self, name: str, text: str, verdict: Judgement | None) -> str:
        """The user's request for a revision, with the judge's feedback on the answer when the stage gives it."""
        if not self.stage.feedback or verdict is None:
            return text
        detail = verdict.detail.strip() or "no detail"
        state = "could not judge it" if verdict.failed else f"scored it {verdict.score:g}"
        return f"Feedback on your answer: the checker {state} ({detail}).\n\n{text}"

    def request_ids(self, prompt: Prompt, context: list[dict[str, str]]) -> list[int]:
        """The prompt and the revision's request as the writer's tokens."""
        if self.stage.reviser is None:
            return self.ctx.prompt_ids_of(prompt.prompt_id, context_key(context))
        return encode_prompt(self.tokenizer, prompt.messages + context, self.ctx.plan.system_prompt)

    def policy_tokens(self, ids: list[int], reason: str) -> list[int]:
        """A revision as the policy's tokens: the reviser's text encoded again (its end of text kept)."""
        if self.stage.reviser is None:
            return ids
        tok = self.ctx.tokenizer
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return tok.encode(text, add_special_tokens=False) + ([tok.eos_token_id] if reason == "stop" else [])

    def revise(self, chosen: list[tuple[Prompt, list]], nexts: dict[str, int]) -> list[tuple[Prompt, list[Rollout]]]:
        """One revision per (answer, perspective) of every prompt, generated in one batch; the new rollouts."""
        s, ctx, seed = self.ctx.config.sampling, self.ctx, self.ctx.config.run.seed
        jobs: list[tuple[Prompt, Rollout, list[dict[str, str]], int]] = []  # (prompt, parent, context, seed)
        for p, picked in chosen:
            for parent, verdict in picked:
                for name, text in self.stage.requests():
                    context = [
                        {"role": "assistant", "content": shown(parent)},
                        {"role": "user", "content": self.request(name, text, verdict)},
                    ]
                    job_seed = derive_seed(seed, self.r, "refine", *self.tag, p.prompt_id, parent.sample_idx, name)
                    jobs.append((p, parent, context, job_seed))
        made: dict[str, list[Rollout]] = {p.prompt_id: [] for p, _ in chosen}
        if not jobs:
            return [(p, []) for p, _ in chosen]
        outs = self.sampler.generate(
            [self.request_ids(p, c) for p, _, c, _ in jobs],
            [[job_seed] for *_, job_seed in jobs],
            s.temperature,
            s.top_p,
            s.max_new_tokens,
            s.batch_size,
        )
        for (p, parent, context, job_seed), [(ids, reason)] in zip(jobs, outs):
            self.new_tokens += len(ids)
            ids = self.policy_tokens(ids, reason)
            idx = nexts[p.prompt_id]
            nexts[p.prompt_id] += 1
            made[p.prompt_id].append(
                ctx.response(
                    p.prompt_id,
                    idx,
                    self.r,
                    job_seed,
                    ids,
                    reason,
                    self.stage.source,
                    parent=parent.sample_idx,
                    context=context,
                )
            )
        return [(p, made[p.prompt_id]) for p, _ in chosen]
