"""propose: the policy writes new problems of the task's kind; those whose answer can be established join the
next round's training prompts.

Each candidate is written after a request showing problems of the round
(``mode: new``: a few of them as examples, "write a new one"; ``evolve``: one
of them, "rewrite it into a new one", prompt evolution). A candidate is kept
when

- it is not a held-out problem, nor a training problem, nor an earlier
  candidate, by the task's notion of the same problem (Task.problem_key:
  arithmetic compares the operation, so a rephrased held-out question is
  caught too): generated prompts never reach the held-out split;
- its answer can be established: the task works it out (``answer: task``,
  Task.solve), or ``votes`` solutions by the policy agree on one final answer
  (as the judge reads it, Judge.answer_of) at least ``agreement`` of the time
  (``answer: vote``);
- with ``solve_rate: [lo, hi]``, the share of the policy's solutions that reach
  that answer lies in [lo, hi]: the reward guides which problems are kept, the
  ones the policy solves sometimes (Prompt-A-Video's reward-guided prompt
  evolution, on text).

Kept problems are written as prompts ``gen-r<round>-<candidate>`` to
``proposed_prompts.parquet`` in the round's directory, and the next round
samples them after its training prompts (RunContext.prompts_of_round). Every
candidate's and solution's seed derives from (run seed, round, candidate), so
the stage's output is a function of the seeds; it is written at once, and a
crash before that runs the stage again, to the same result.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from iterpo.errors import ConfigError
from iterpo.judges import Judge
from iterpo.progress import bar
from iterpo.records import Prompt, to_table
from iterpo.sampling import derive_seed
from iterpo.stages.base import Stage, register_stage

NEW = (
    "Here are some problems:\n\n{examples}\n\nWrite one new problem of the same kind, different from all of these. "
    "Reply with the problem only."
)
EVOLVE = (
    "Here is a problem:\n\n{examples}\n\nWrite a new problem of the same kind by changing its numbers or its "
    "wording. Reply with the problem only."
)
MODES = {"new": NEW, "evolve": EVOLVE}
ANSWERS = ("task", "vote")
PREFIXES = ("new problem:", "problem:", "question:")  # a label the policy may put before its problem


def cleaned(text: str) -> str:
    """A written problem without surrounding quotes or a leading label."""
    text = text.strip().strip("\"'`").strip()
    for prefix in PREFIXES:
        if text.lower().startswith(prefix):
            text = text[len(prefix) :].strip()
    return text


@register_stage("propose")
@dataclass
class Propose(Stage):
    """New training problems for the next round, written by the policy at the stage's place in the round (after
    the round's training: the trained policy)."""

    writes = {"proposed": "proposed_prompts.parquet"}

    candidates: int = 32
    """Problems the policy writes each round."""
    keep: int | None = None
    """At most this many are kept (the first that pass, in candidate order); default: every one that passes."""
    mode: str = "new"
    """'new': write a new problem after ``examples`` of the round's problems; 'evolve': rewrite one of them."""
    examples: int = 3
    """mode new: problems of the round shown in the request."""
    request: str | None = None
    """The request, with {examples} where the problems go (default: the mode's)."""
    answer: str = "task"
    """'task': the task works out the answer (arithmetic does); 'vote': the policy's solutions vote."""
    votes: int = 5
    """Solutions the policy writes per candidate (answer: vote, or a solve_rate)."""
    agreement: float = 0.6
    """answer: vote: the share of the solutions that must give the winning answer."""
    solve_rate: list[float] | None = None
    """[lo, hi]: keep a problem only when the share of the policy's solutions reaching its answer is in [lo, hi]."""
    min_chars: int = 8
    max_chars: int = 400
    """A written problem must have this many characters, after cleaning."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.answer not in ANSWERS:
            raise ValueError(f"answer must be one of {', '.join(ANSWERS)}, got {self.answer!r}")
        if self.candidates < 1 or self.examples < 1 or self.votes < 1:
            raise ValueError("candidates, examples and votes must be at least 1")
        if self.keep is not None and self.keep < 1:
            raise ValueError(f"keep must be at least 1, got {self.keep}")
        if not 0 < self.agreement <= 1:
            raise ValueError(f"agreement must be in (0, 1], got {self.agreement}")
        if self.solve_rate is not None and (
            len(self.solve_rate) != 2 or not 0 <= self.solve_rate[0] <= self.solve_rate[1] <= 1
        ):
            raise ValueError(f"solve_rate must be [lo, hi] with 0 <= lo <= hi <= 1, got {self.solve_rate}")
        if self.request is not None and "{examples}" not in self.request:
            raise ValueError("request must hold {examples}, where the problems shown go")

    def fits(self, plan) -> None:
        if self.answer == "vote" or self.solve_rate is not None:
            judge = plan.eval_judge
            if type(judge).answer_of is Judge.answer_of:  # the base class's: it reads no answer
                raise ConfigError(
                    f"round.stages: {self.label} votes on answers as judge {judge.name!r} reads them, and it reads "
                    "none (use a verifier such as exact_answer or multiple_choice)"
                )
        if plan.environment is not None:
            raise ConfigError(f"round.stages: {self.label} writes plain problems; not with an environment")

    def run(self, ctx, r):
        task, judge = ctx.plan.task, ctx.plan.eval_judge
        shown = ctx.prompts_of_round(r)
        held_out = {task.problem_key(p.text) for p in ctx.eval_prompts}
        seen = {task.problem_key(p.text) for p in ctx.train_prompts} | {task.problem_key(p.text) for p in shown}
        s, seed = ctx.config.sampling, ctx.config.run.seed
        template = self.request or MODES[self.mode]
        requests, seeds = [], []
        for i in range(self.candidates):
            rng = random.Random(derive_seed(seed, r, "propose", self.label, i))
            picked = rng.sample(shown, min(len(shown), 1 if self.mode == "evolve" else self.examples))
            listing = (
                "\n".join(f"{n + 1}. {p.text}" for n, p in enumerate(picked)) if len(picked) > 1 else picked[0].text
            )
            messages = [{"role": "user", "content": template.format(examples=listing)}]
            requests.append(ctx.encode(messages))
            seeds.append([derive_seed(seed, r, "propose", self.label, i, "write")])
        dropped: Counter[str] = Counter()
        kept: list[Prompt] = []
        with ctx.sampler_at(r, self) as sampler, bar("proposing", self.candidates) as advance:
            written = sampler.generate(requests, seeds, s.temperature, s.top_p, self.max_new_tokens(ctx), s.batch_size)
            texts = [cleaned(ctx.tokenizer.decode(ids, skip_special_tokens=True)) for [(ids, _)] in written]
            candidates: list[tuple[int, str, str | None]] = []  # (candidate, problem, task's answer)
            for i, text in enumerate(texts):
                key = task.problem_key(text)
                if not self.min_chars <= len(text) <= self.max_chars:
                    dropped["too short or too long"] += 1
                elif key in held_out:
                    dropped["a held-out problem"] += 1
                elif key in seen:
                    dropped["a known problem"] += 1
                else:
                    seen.add(key)
                    worked_out = task.solve(text)
                    if self.answer == "task" and worked_out is None:
                        dropped["no answer the task can work out"] += 1
                    else:
                        candidates.append((i, text, worked_out))
            solved = self.solutions(ctx, sampler, r, candidates, judge) if self.voting() else {}
            for i, text, worked_out in candidates:
                answer, rate = worked_out, None
                if self.voting():
                    answers = solved[i]
                    if self.answer == "vote":
                        top = Counter(a for a in answers if a is not None).most_common(1)
                        if not top or top[0][1] < self.agreement * len(answers):
                            dropped["the solutions do not agree"] += 1
                            continue
                        answer = top[0][0]
                    rate = sum(a == answer for a in answers) / len(answers)
                    if self.solve_rate is not None and not self.solve_rate[0] <= rate <= self.solve_rate[1]:
                        dropped["solve rate outside solve_rate"] += 1
                        continue
                kept.append(Prompt(f"gen-r{r:03d}-{i:05d}", [{"role": "user", "content": text}], answer))
            advance(self.candidates)
        if self.keep is not None:
            dropped["beyond keep"] += max(0, len(kept) - self.keep)
            kept = kept[: self.keep]
        clash = [p.prompt_id for p in kept if p.prompt_id in ctx.prompts_by_id]
        if clash:
            raise ConfigError(f"generated prompt ids {clash[:3]} are taken by training prompts; rename those")
        ctx.store.write_parquet(ctx.store.path(r, self.file("proposed")), to_table(kept, Prompt))
        return {"kept": len(kept), "dropped": dict(dropped)}

    def voting(self) -> bool:
        return self.answer == "vote" or self.solve_rate is not None

    def max_new_tokens(self, ctx) -> int:
        return max(ctx.config.sampling.max_new_tokens, self.max_chars // 3)

    def solutions(self, ctx, sampler, r: int, candidates: list, judge) -> dict[int, list[str | None]]:
        """Per candidate, the final answers (as the judge reads them) of ``votes`` solutions by the policy."""
        if not candidates:
            return {}
        s, seed = ctx.config.sampling, ctx.config.run.seed
        prompts = [ctx.encode([{"role": "user", "content": text}]) for _, text, _ in candidates]
        seeds = [
            [derive_seed(seed, r, "propose", self.label, i, "solve", k) for k in range(self.votes)]
            for i, _, _ in candidates
        ]
        outs = sampler.generate(prompts, seeds, s.temperature, s.top_p, s.max_new_tokens, s.batch_size)
        return {  # each solution's answer part (with a reasoning section, after it), as the judge reads it
            i: [judge.answer_of(ctx.response("", 0, r, 0, ids, why, "propose").text) for ids, why in row]
            for (i, _, _), row in zip(candidates, outs)
        }
