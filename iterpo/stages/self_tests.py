"""self_tests: the policy writes unit tests for its own solutions, and solutions and tests rank each other
(CodeDPO, Zhang et al. 2024), in place of a judge that knows the answer.

Per training prompt (a code problem), the policy writes ``test_samples``
replies to a request for assert statements; up to ``max_tests`` distinct
asserts that parse are its tests. Every distinct solution (the last code block
of each sampled response) runs against every test in the sandbox, one run per
pair (iterpo.judges.code.run_hidden_tests: no network, a read-only file system
outside a throw-away directory, time, memory and process limits; the tests are
as untrusted as the code). The pass matrix gives the solutions' and the tests'
mutual scores (iterpo.judges.mutual); each solution's judgement is its score
over the prompt's best (1 for the best), minus ``efficiency`` times its
measured run time over the slowest passing solution's, so that among equally
credible solutions the faster wins (CodeDPO's efficiency pairs). Any pairing
strategy then pairs them (best_vs_worst).

The stage writes the solutions' judgements, the tests as responses (source
``self_test``, after the request) and the tests' scores, shard by shard of
``sampling.shard_size`` prompts: a finished shard survives a crash, and every
test's seed derives from (run seed, round, prompt id, sample), so a resumed
stage writes the same tests. The held-out prompts are never shown to it: it
reads the round's training prompts only.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from iterpo.errors import ConfigError
from iterpo.judges.code import extract_code, timed_hidden_tests
from iterpo.judges.mutual import mutual_scores
from iterpo.judges.sandbox import SandboxLimits, check_sandbox
from iterpo.progress import bar
from iterpo.records import Judgement, Prompt, Rollout, by_prompt, from_table, to_table
from iterpo.sampling import derive_seed
from iterpo.stages.base import Stage, register_stage

REQUEST = (
    "{problem}\n\nDo not solve it. Write {count} assert statements that a correct solution must pass, one per "
    "line, in one ```python code block."
)
SOURCE = "self_test"


def asserts_of(text: str) -> list[str]:
    """The single-line assert statements of a reply's code blocks (or of the reply), in order, each parsed alone."""
    out = []
    for line in extract_code(text).splitlines():
        line = line.strip()
        if not line.startswith("assert"):
            continue
        try:
            tree = ast.parse(line)
        except SyntaxError:
            continue
        if len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert):
            out.append(line)
    return out


@register_stage("self_tests")
@dataclass
class SelfTests(Stage):
    """Judgements of the round's code responses from tests the policy wrote, ranked together with them."""

    reads = ("rollouts",)
    writes = {
        "judgements": "self_test_judgements.parquet",
        "tests": "self_tests.parquet",
        "test_judgements": "self_test_scores.parquet",
    }

    test_samples: int = 2
    """Replies the policy writes to the request for tests, per prompt."""
    max_tests: int = 4
    """Distinct asserts kept per prompt (the first, in reply order)."""
    damping: float = 0.85
    """The mutual ranking's damping d."""
    efficiency: float = 0.0
    """Subtracted from a solution's score times its run time over the slowest passing solution's (0: off)."""
    wall_seconds: float = 10.0
    cpu_seconds: int = 5
    memory_mb: int = 512
    """Sandbox limits of each (solution, test) run."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.test_samples < 1 or self.max_tests < 1:
            raise ValueError("test_samples and max_tests must be at least 1")
        if not 0 < self.damping <= 1:
            raise ValueError(f"damping must be in (0, 1], got {self.damping}")
        if self.efficiency < 0:
            raise ValueError(f"efficiency must be at least 0, got {self.efficiency}")

    def fits(self, plan) -> None:
        if plan.environment is not None:
            raise ConfigError(f"round.stages: {self.label} runs plain code responses; not with an environment")
        check_sandbox()  # no sandbox on this machine: stop before any sampling

    def run(self, ctx, r):
        store, size = ctx.store, ctx.config.sampling.shard_size
        outs = {role: store.path(r, self.file(role)) for role in self.writes}
        prompts = ctx.prompts_of_round(r)
        of_prompt = by_prompt(ctx.read(r, self.input("rollouts"), Rollout))
        shards = [prompts[i : i + size] for i in range(0, len(prompts), size)]
        kinds = {"judgements": Judgement, "tests": Rollout, "test_judgements": Judgement}
        found = {role: store.intact_shards(path, len(shards)) for role, path in outs.items()}
        done = {
            n: {role: from_table(found[role][n], kinds[role]) for role in outs}
            for n in range(len(shards))
            if all(n in found[role] for role in outs)
        }
        limits = SandboxLimits(wall_seconds=self.wall_seconds, cpu_seconds=self.cpu_seconds, memory_mb=self.memory_mb)
        runs = 0
        with ctx.sampler(r - 1) as sampler, bar("self-testing", len(prompts)) as advance:
            advance(sum(len(shards[n]) for n in done))
            for n in range(len(shards)):
                if n in done:
                    continue
                tests = self.write_tests(ctx, sampler, r, shards[n])
                rows: dict[str, list] = {"judgements": [], "tests": [], "test_judgements": []}
                for p in shards[n]:
                    mine = [t for t in tests if t.prompt_id == p.prompt_id]
                    judged, scored, count = self.rank(p, of_prompt.get(p.prompt_id, []), mine, limits)
                    rows["judgements"] += judged
                    rows["tests"] += mine
                    rows["test_judgements"] += scored
                    runs += count
                for role in ("test_judgements", "tests", "judgements"):  # the judgements shard marks it done
                    store.write_parquet(store.shard(outs[role], n), to_table(rows[role], kinds[role]))
                done[n] = rows
                advance(len(shards[n]))
        for role in ("test_judgements", "tests", "judgements"):
            rows_all = [x for n in range(len(shards)) for x in done[n][role]]
            store.write_parquet(outs[role], to_table(rows_all, kinds[role]))
        for path in outs.values():
            store.remove(path.with_suffix(""))  # the shards
        judged = [x for n in done for x in done[n]["judgements"]]
        return {
            "tests": sum(len(done[n]["tests"]) for n in done),
            "sandbox_runs": runs,
            "solutions_passing_some_test": sum(x.score > 0 for x in judged),
        }

    def write_tests(self, ctx, sampler, r: int, prompts: list[Prompt]) -> list[Rollout]:
        """The policy's tests for prompts: distinct parsable asserts, as responses of source self_test."""
        s, seed = ctx.config.sampling, ctx.config.run.seed
        asks = [[{"role": "user", "content": REQUEST.format(problem=p.text, count=self.max_tests)}] for p in prompts]
        seeds = [[derive_seed(seed, r, SOURCE, p.prompt_id, k) for k in range(self.test_samples)] for p in prompts]
        requests = [ctx.encode(ask) for ask in asks]
        outs = sampler.generate(requests, seeds, s.temperature, s.top_p, s.max_new_tokens, s.batch_size)
        tests: list[Rollout] = []
        for p, context, row, row_seeds in zip(prompts, asks, outs, seeds):
            kept: list[str] = []
            for (ids, why), k_seed in zip(row, row_seeds):
                reply = ctx.response(p.prompt_id, 0, r, k_seed, ids, why, SOURCE).text
                for line in asserts_of(reply):
                    if line not in kept and len(kept) < self.max_tests:
                        kept.append(line)
            for j, line in enumerate(kept):
                ids = ctx.tokenizer.encode(line, add_special_tokens=False)
                tests.append(Rollout(p.prompt_id, j, r, row_seeds[0], line, ids, "stop", SOURCE, context=context))
        return tests

    def rank(self, prompt: Prompt, solutions: list[Rollout], tests: list[Rollout], limits) -> tuple[list, list, int]:
        """The solutions' and the tests' judgements from their pass matrix; and how many sandbox runs it took."""
        codes = [extract_code(x.text) for x in solutions]
        distinct = list(dict.fromkeys(codes))
        passed: dict[tuple[int, int], tuple[bool, float]] = {}  # (distinct code, test) -> (passed, seconds)
        for c, code in enumerate(distinct):
            for t, test in enumerate(tests):
                score, _, seconds = timed_hidden_tests(code, test.text, limits)
                passed[(c, t)] = (score >= 1.0, seconds)
        matrix = [[passed[(c, t)][0] for t in range(len(tests))] for c in range(len(distinct))]
        code_scores, test_scores = mutual_scores(matrix, self.damping)
        best = max(code_scores, default=0.0)
        times = [
            sum(passed[(c, t)][1] for t in range(len(tests)) if passed[(c, t)][0]) / max(1, sum(matrix[c]))
            for c in range(len(distinct))
        ]
        slowest = max((tm for tm, row in zip(times, matrix) if any(row)), default=0.0)
        judged = []
        for x, code in zip(solutions, codes):
            c = distinct.index(code)
            score = code_scores[c] / best if best > 0 else 0.0
            if self.efficiency and any(matrix[c]) and slowest > 0:
                score -= self.efficiency * times[c] / slowest
            detail = f"passes {sum(matrix[c])} of {len(tests)} of the policy's tests" if tests else "no tests written"
            samples = [float(v) for v in matrix[c]]
            judged.append(Judgement(x.prompt_id, x.sample_idx, "self_tests", score, detail, samples=samples))
        accepted = [sum(matrix[c][t] for c in range(len(distinct))) for t in range(len(tests))]
        top = max(test_scores, default=0.0)
        scored = [
            Judgement(
                t.prompt_id,
                t.sample_idx,
                "self_tests",
                s / top if top > 0 else 0.0,
                f"accepts {k} of {len(distinct)} distinct solutions",
            )
            for t, s, k in zip(tests, test_scores, accepted)
        ]
        return judged, scored, len(passed)
