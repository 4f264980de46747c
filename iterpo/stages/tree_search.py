"""tree_search: Monte-Carlo tree search over the steps of each training prompt's response (MCTS-DPO, Xie et al.
2024; step-level search as in Step-DPO, TPO and, with a tool environment, SPORT and Agent Q).

A step is the policy's text up to ``step_delimiter`` (by default a line); with
an environment (``environment.name``) a step is one turn, with the tool's answer
to a call in it. Per prompt, each of ``simulations`` simulations selects a node
by PUCT, samples ``children`` next steps from the policy the round starts from,
evaluates each new step, and backs the values up (iterpo.sampling.tree). A new
step's value is its verdict when the response ended there, else the mean verdict
of ``rollouts`` Monte-Carlo completions from it, the run's judge reading each
(the task's verifier, usually), mixed with a process judge's value of the step
when ``process_judge`` names one (``process_weight`` of it).

Every node's step is sampled with a seed derived from (run seed, round, prompt
id, its path in the tree), and a completion's from its node's seed: a search
depends on the seeds alone, so a killed search runs again to the identical tree.
Prompts are searched in shards of ``sampling.shard_size``, all of a shard's
trees together (one batched generation per simulation); a shard's finished tree
is written at once (tree/shard-N.parquet) and survives a crash.

It writes the tree (tree.parquet: one TreeNode per node), every node but the
root as a response (rollouts.parquet, source ``tree``: the steps from the root
to it, finish_reason ``step`` when the response goes on after it) and the
nodes' values as judgements (judge ``tree_search``: score Q, visits N), which
the pair stage reads: ``pairing.strategy: divergence`` pairs sibling steps.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

from iterpo.environments.episodes import Episode, Limits, run_episodes, take_turn
from iterpo.errors import ConfigError
from iterpo.judges import make_judge
from iterpo.progress import bar
from iterpo.records import Judgement, Prompt, Rollout, TreeNode, from_table, to_table
from iterpo.sampling import derive_seed
from iterpo.sampling.tree import Node, Tree
from iterpo.stages.base import Stage, register_stage
from iterpo.stages.verdicts import Verdicts


@register_stage("tree_search")
@dataclass
class TreeSearch(Stage):
    """MCTS over steps per training prompt; writes the tree, its nodes as responses and their values."""

    writes = {"rollouts": "rollouts.parquet", "judgements": "judgements.parquet", "tree": "tree.parquet"}

    simulations: int = 8
    """Simulations per prompt (each expands one node into ``children`` steps): the per-prompt budget."""
    children: int = 2
    """Next steps sampled when a node is expanded (MCTS-DPO: 2)."""
    max_depth: int = 4
    """Steps per response: a step at this depth runs to the end of the response (with an environment:
    environment.max_turns instead)."""
    step_delimiter: str = "\n"
    """Where a step ends (a reasoning step: a line by default)."""
    max_step_tokens: int = 64
    """Tokens per step; the whole response stays within sampling.max_new_tokens (environment.max_tokens)."""
    rollouts: int = 1
    """Monte-Carlo completions judged per new step that does not end the response (0: the process judge alone)."""
    c_puct: float = 1.0
    """Exploration weight of PUCT."""
    process_judge: str | dict[str, Any] | None = None
    """A judge of partial responses (a name or {name: ..., options}): prm, step_judge, or any pointwise judge."""
    process_weight: float = 0.5
    """The process judge's share of a new open step's value (1 when rollouts is 0)."""

    def check(self, earlier: list[Stage]) -> None:
        if min(self.simulations, self.children, self.max_depth, self.max_step_tokens) < 1:
            raise ValueError("simulations, children, max_depth and max_step_tokens must be at least 1")
        if self.rollouts < 0 or self.c_puct < 0 or not 0.0 <= self.process_weight <= 1.0:
            raise ValueError("rollouts and c_puct must be at least 0 and process_weight in [0, 1]")
        if not self.step_delimiter:
            raise ValueError("step_delimiter must not be empty")
        if self.rollouts == 0 and self.process_judge is None:
            raise ValueError("with rollouts 0, a process_judge must give the steps their values")
        self.process()  # an unknown judge or option fails here, before the run

    def process(self):
        """The process judge (built once), or None."""
        if self.process_judge is None:
            return None
        if getattr(self, "_process", None) is None:
            spec = {"name": self.process_judge} if isinstance(self.process_judge, str) else dict(self.process_judge)
            name = spec.pop("name", None)
            if not isinstance(name, str):
                raise ValueError(f"process_judge must be a judge name or a mapping with 'name', got {spec!r}")
            self._process = make_judge(name, spec)
        return self._process

    def fits(self, plan) -> None:
        if plan.config.reasoning is not None:
            raise ConfigError(f"round.stages: {self.label} searches over steps; it does not split off a reasoning part")
        if not plan.judge.pointwise:
            raise ConfigError(
                f"round.stages: {self.label} evaluates steps with a pointwise judge; judge {plan.judge.name!r} compares"
            )

    def run(self, ctx, r):
        search = Search(self, ctx, r)
        store = ctx.store
        tree = store.path(r, self.file("tree"))
        prompts = ctx.prompts_of_round(r)
        size = ctx.config.sampling.shard_size
        shards = [prompts[i : i + size] for i in range(0, len(prompts), size)]
        # a damaged shard is searched again: a search depends on its seeds alone
        done = {n: from_table(t, TreeNode) for n, t in store.intact_shards(tree, len(shards)).items()}
        start = time.perf_counter()
        with bar("tree search", len(prompts) * self.simulations) as advance:
            advance(sum(len(shards[n]) for n in done) * self.simulations)
            with search.sampler:
                for n in range(len(shards)):
                    if n in done:
                        continue
                    trees = search.shard(shards[n], advance)
                    search.asking.check_failures(
                        ctx.config.judge.max_failed_share, "the values of those steps would count them as 0"
                    )
                    done[n] = [node_row(p.prompt_id, x) for p, t in zip(shards[n], trees) for x in t.nodes]
                    search.cache.flush()  # first: a shard on disk has its verdicts in the cache
                    store.write_parquet(store.shard(tree, n), to_table(done[n], TreeNode))
        rows = [x for n in range(len(shards)) for x in done[n]]
        by_prompt = {p.prompt_id: p for p in prompts}
        rollouts, judgements = search.records(rows, by_prompt)
        store.write_parquet(tree, to_table(rows, TreeNode))
        store.write_parquet(store.path(r, self.file("judgements")), to_table(judgements, Judgement))
        store.write_parquet(store.path(r, self.file("rollouts")), to_table(rollouts, Rollout))  # marks it done
        store.remove(tree.with_suffix(""))  # the shards
        seconds = time.perf_counter() - start
        return {
            "nodes": len(rollouts),
            "policy_calls": search.policy_calls,  # sequences generated: steps and completions
            "new_tokens": search.new_tokens,
            "tokens_per_prompt": round(search.new_tokens / max(1, len(prompts)), 1),
            "failed_verdicts": search.asking.failed,
            "tokens_per_s": round(search.new_tokens / seconds, 1),
        }


def node_row(prompt_id: str, x: Node) -> TreeNode:
    return TreeNode(
        prompt_id,
        x.node_id,
        x.parent,
        list(x.path),
        x.seed,
        x.token_ids,
        x.policy_mask,
        x.text,
        x.observation,
        x.finish_reason,
        x.value,
        x.visits,
        x.value_sum,
    )


class Search:
    """One round's search: the policy's sampler, the judges and the limits, shard after shard."""

    def __init__(self, stage: TreeSearch, ctx, r: int):
        self.stage, self.ctx, self.r = stage, ctx, r
        self.tok = ctx.tokenizer
        self.env = ctx.plan.environment
        s, e = ctx.config.sampling, ctx.config.environment
        self.temperature, self.top_p, self.batch_size = s.temperature, s.top_p, s.batch_size
        if self.env is None:
            self.budget, self.depth = s.max_new_tokens, stage.max_depth
        else:  # a step is a turn: the environment's limits
            self.budget, self.depth = e.max_tokens, e.max_turns
            self.limits = Limits(e.max_turns, e.max_tokens, s.max_new_tokens, e.max_observation_tokens)
        self.sampler = ctx.sampler(r - 1)  # the policy the round starts from
        self.cache = ctx.judge_cache()
        self.judge = ctx.plan.judge
        self.judge.setup(ctx.judge_context(r, self.cache))
        self.process = stage.process()
        if self.process is not None:
            self.process.setup(ctx.judge_context(r, self.cache))
        self.asking = Verdicts(self.cache, "tree search")
        self.policy_calls = self.new_tokens = 0

    # ------------------------------------------------------------------ one shard

    def shard(self, prompts: list[Prompt], advance) -> list[Tree]:
        """The searched trees of prompts, all advancing together, one simulation at a time."""
        trees = [Tree(self.seed_of(p, ())) for p in prompts]
        for _ in range(self.stage.simulations):
            leaves = [(i, leaf) for i, t in enumerate(trees) if (leaf := t.select(self.stage.c_puct)) is not None]
            if leaves:
                made = self.expand(prompts, trees, leaves)
                for (i, node), value in zip(made, self.evaluate(prompts, trees, made)):
                    trees[i].backup(node, value)
            advance(len(prompts))
        return trees

    def seed_of(self, prompt: Prompt, path: tuple[int, ...]) -> int:
        """The seed of the step at path in prompt's tree: (run seed, round, prompt id, the path)."""
        return derive_seed(self.ctx.config.run.seed, self.r, prompt.prompt_id, "node", *path)

    def context(self, prompt: Prompt, tree: Tree, node: Node) -> list[int]:
        """The prompt's tokens and the steps from the root to node."""
        return self.ctx.prompt_ids(prompt) + [t for x in tree.lineage(node) for t in x.token_ids]

    def used(self, tree: Tree, node: Node) -> int:
        return sum(len(x.token_ids) for x in tree.lineage(node))

    def expand(self, prompts, trees: list[Tree], leaves: list[tuple[int, Node]]) -> list[tuple[int, Node]]:
        """``children`` next steps of each leaf, sampled with seeds from their paths; the new nodes."""
        k = self.stage.children
        made: list[tuple[int, Node]] = []
        # steps at the last depth run to the end of the response (no delimiter): a batch of their own
        for last in (False, True):
            group = [(i, leaf) for i, leaf in leaves if (leaf.depth + 1 >= self.depth) == last]
            if not group:
                continue
            seeds = [[self.seed_of(prompts[i], (*leaf.path, j)) for j in range(k)] for i, leaf in group]
            left = [self.budget - self.used(trees[i], leaf) for i, leaf in group]
            if self.env is not None:
                stop, most = [self.env.stop], self.limits.max_new_tokens
            elif last:
                stop, most = [], self.budget
            else:
                stop, most = [self.stage.step_delimiter], self.stage.max_step_tokens
            outs = self.sampler.generate(
                [self.context(prompts[i], trees[i], leaf) for i, leaf in group],
                seeds,
                self.temperature,
                self.top_p,
                max(1, min(most, max(left))),
                self.batch_size,
                stop=stop,
            )
            for (i, leaf), room, leaf_seeds, samples in zip(group, left, seeds, outs):
                for s, (ids, reason) in zip(leaf_seeds, samples):
                    self.policy_calls += 1
                    self.new_tokens += len(ids)
                    made.append((i, trees[i].add(leaf, seed=s, **self.step(ids, reason, room, last))))
        return made

    def step(self, ids: list[int], reason: str, room: int, last: bool) -> dict:
        """A sampled step as a node's fields; ``room``: the response's tokens left before it."""
        if self.env is not None:
            ep = Episode()
            going = take_turn(ep, ids, reason, self.env, self.tok, self.limits, room, last)
            obs = ep.observations[0] if ep.observations else None
            return dict(
                token_ids=ep.token_ids,
                policy_mask=ep.policy_mask,
                text=ep.turns[0],
                observation=obs,
                finish_reason="" if going else ep.finish_reason,
            )
        if len(ids) > room:
            ids, reason = ids[:room], "length"
        eos = bool(ids) and ids[-1] == self.tok.eos_token_id
        if eos or last or len(ids) >= room:
            finish = "stop" if eos else ("length" if reason == "length" or len(ids) >= room else reason)
        else:
            finish = ""  # a delimiter (or the step's own token limit): the response goes on
        text = self.tok.decode(ids, skip_special_tokens=True)
        return dict(token_ids=ids, policy_mask=[True] * len(ids), text=text, finish_reason=finish)

    # ------------------------------------------------------------------ values

    def evaluate(self, prompts, trees: list[Tree], made: list[tuple[int, Node]]) -> list[float]:
        """Each new node's value: a finished response's verdict; else its completions' mean verdict, mixed with the
        process judge's value of the step."""
        n = self.stage.rollouts
        open_ = [(i, x) for i, x in made if not x.terminal]
        finished = {(i, x.node_id): self.as_rollout(prompts[i], trees[i], x) for i, x in made if x.terminal}
        completions = self.complete(prompts, trees, open_) if n else {}
        asked: dict[int, list[tuple[tuple, Rollout]]] = {}  # prompt -> (what it is for, rollout to judge)
        for key, ro in finished.items():
            asked.setdefault(key[0], []).append((key, ro))
        for key, ros in completions.items():
            asked.setdefault(key[0], []).extend((key, ro) for ro in ros)
        scores: dict[tuple, list[float]] = {}
        for i, items in asked.items():
            for (key, _), verdict in zip(items, self.verdicts(self.judge, prompts[i], [ro for _, ro in items])):
                scores.setdefault(key, []).append(verdict)
        process: dict[tuple, float] = {}
        if self.process is not None:
            by_prompt: dict[int, list[Node]] = {}
            for i, x in open_:
                by_prompt.setdefault(i, []).append(x)
            for i, nodes in by_prompt.items():
                steps = [self.as_rollout(prompts[i], trees[i], x) for x in nodes]
                for x, v in zip(nodes, self.verdicts(self.process, prompts[i], steps)):
                    process[(i, x.node_id)] = v
        w = self.stage.process_weight if n else 1.0
        values = []
        for i, x in made:
            key = (i, x.node_id)
            if x.terminal:
                values.append(scores[key][0])
            elif self.process is None:
                values.append(statistics.fmean(scores[key]))
            elif n == 0:
                values.append(process[key])
            else:
                values.append((1 - w) * statistics.fmean(scores[key]) + w * process[key])
        return values

    def verdicts(self, judge, prompt: Prompt, rollouts: list[Rollout]) -> list[float]:
        """judge's scores of rollouts through the run's cache (a failed verdict counts as 0 and is counted)."""
        return [0.0 if j.failed else j.score for j in self.asking(judge, prompt, rollouts)]

    def complete(self, prompts, trees, nodes: list[tuple[int, Node]]) -> dict[tuple, list[Rollout]]:
        """``rollouts`` completions of each open node to the end of its response, seeded from the node's seed."""
        n = self.stage.rollouts
        if not nodes:
            return {}
        seeds = [[derive_seed(x.seed, "rollout", j) for j in range(n)] for _, x in nodes]
        contexts = [self.context(prompts[i], trees[i], x) for i, x in nodes]
        out: dict[tuple, list[Rollout]] = {}
        if self.env is None:
            left = [self.budget - self.used(trees[i], x) for i, x in nodes]
            outs = self.sampler.generate(contexts, seeds, self.temperature, self.top_p, max(left), self.batch_size)
            for (i, x), room, samples in zip(nodes, left, outs):
                prefix = [t for y in trees[i].lineage(x) for t in y.token_ids]
                rows = []
                for ids, reason in samples:
                    self.policy_calls += 1
                    self.new_tokens += len(ids)
                    if len(ids) > room:  # the response's budget ends inside the completion
                        ids, reason = ids[:room], "length"
                    text = self.tok.decode(prefix + ids, skip_special_tokens=True)
                    rows.append(Rollout(prompts[i].prompt_id, 0, self.r, 0, text, prefix + ids, reason, "tree"))
                out[(i, x.node_id)] = rows
            return out
        e = self.limits  # episodes go on from each node's turns, within what the node left of the limits
        limits = [
            Limits(
                e.max_turns - x.depth, e.max_tokens - self.used(trees[i], x), e.max_new_tokens, e.max_observation_tokens
            )
            for i, x in nodes
        ]
        played = run_episodes(
            self.sampler, self.tok, self.env, limits, contexts, seeds, self.temperature, self.top_p, self.batch_size
        )
        for (i, x), episodes in zip(nodes, played):
            lineage = trees[i].lineage(x)
            rows = []
            for ep in episodes:
                self.policy_calls += len(ep.turns)
                self.new_tokens += sum(ep.policy_mask)
                turns = [y.text for y in lineage] + ep.turns
                observations = [y.observation for y in lineage if y.observation is not None] + ep.observations
                whole = Episode(turns=turns, observations=observations)
                rows.append(
                    Rollout(
                        prompts[i].prompt_id,
                        0,
                        self.r,
                        0,
                        ep.final,
                        ep.token_ids,
                        ep.finish_reason,
                        "tree",
                        transcript=whole.transcript(),
                        observations=observations,
                    )
                )
            out[(i, x.node_id)] = rows
        return out

    # ------------------------------------------------------------------ records

    def as_rollout(self, prompt: Prompt, tree: Tree, node: Node) -> Rollout:
        """node as a response: the steps from the root to it (what a judge reads and training trains on)."""
        return self.rollout(prompt.prompt_id, [node_row(prompt.prompt_id, x) for x in tree.lineage(node)], node.seed)

    def rollout(self, prompt_id: str, lineage: list[TreeNode], seed: int) -> Rollout:
        node = lineage[-1]
        ids = [t for x in lineage for t in x.token_ids]
        mask = [m for x in lineage for m in x.policy_mask]
        ends, total = [], 0
        for x in lineage:
            total += len(x.token_ids)
            ends.append(total)
        if self.env is None:
            text, transcript, observations = self.tok.decode(ids, skip_special_tokens=True), None, []
        else:
            observations = [x.observation for x in lineage if x.observation is not None]
            text = node.text  # what judges read: the last turn (the final answer when it ends the episode)
            transcript = Episode(turns=[x.text for x in lineage], observations=observations).transcript()
        return Rollout(
            prompt_id,
            node.node_id,
            self.r,
            seed,
            text,
            ids,
            node.finish_reason or "step",
            "tree",
            policy_mask=mask if not all(mask) else [],
            step_ends=ends,
            transcript=transcript,
            observations=observations,
        )

    def records(self, rows: list[TreeNode], prompts: dict[str, Prompt]) -> tuple[list[Rollout], list[Judgement]]:
        """Every node but the roots as a response, and its value as a judgement (score Q, visits N)."""
        by_id = {(x.prompt_id, x.node_id): x for x in rows}
        rollouts, judgements = [], []
        for x in rows:
            if x.parent < 0:
                continue
            lineage, y = [], x
            while y.parent >= 0:
                lineage.append(y)
                y = by_id[(x.prompt_id, y.parent)]
            rollouts.append(self.rollout(x.prompt_id, lineage[::-1], x.seed))
            q = x.value_sum / x.visits if x.visits else 0.0
            detail = f"Q {q:.4g} over {x.visits} visits; own value {x.value:.4g}" if x.value is not None else ""
            judgements.append(Judgement(x.prompt_id, x.node_id, "tree_search", q, detail, visits=x.visits))
        return rollouts, judgements
