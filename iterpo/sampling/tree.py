"""A search tree over a response's steps, and the bookkeeping of Monte-Carlo tree search on it.

This module knows nothing about models: the tree_search stage expands nodes
with the policy and evaluates them with judges; here live the nodes, the
selection rule and the backup.

One simulation (MCTS-DPO, Xie et al. 2024; PUCT as in AlphaZero):

1. **select**: from the root, go to the child maximising
   ``Q(c) + c_puct * p(c) * sqrt(N(parent)) / (1 + N(c))`` until a node that has
   no children yet; p is uniform over a node's children (1/k), Q the mean value
   backed up through the child, N its visits. Closed subtrees (every leaf a
   finished response) are never selected again.
2. **expand**: the caller samples k next steps of that node (its children);
3. **evaluate**: the caller gives each child a value in [0, 1] or any judge's
   scale (a finished response: its verdict; an open one: Monte-Carlo
   completions judged, and/or a process judge's value of the step);
4. **backup**: each child's value is added to it and every ancestor, one visit
   each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Node:
    node_id: int  # 0 is the root (the prompt); children are numbered in the order they are made
    parent: int  # -1 for the root
    path: tuple[int, ...]  # child indices from the root: () for the root, (0, 1) for the root's first child's second
    seed: int  # the seed its step was sampled with, derived from (run seed, round, prompt id, path)
    token_ids: list[int] = field(default_factory=list)  # (T_step,) this step's tokens; a tool's answer after it too
    policy_mask: list[bool] = field(default_factory=list)  # (T_step,) False on a tool's answer (context)
    text: str = ""  # this step's text, as the policy wrote it
    observation: str | None = None  # the tool's answer to a call in this step (environments)
    finish_reason: str = ""  # "" while the response goes on after this step; else why it ended ("stop", "length"...)
    value: float | None = None  # the node's own evaluation
    visits: int = 0  # N: evaluations backed up through the node
    value_sum: float = 0.0  # their sum; Q = value_sum / visits
    children: list[int] = field(default_factory=list)

    @property
    def depth(self) -> int:
        return len(self.path)

    @property
    def terminal(self) -> bool:
        return bool(self.finish_reason)

    @property
    def q(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0


class Tree:
    """The nodes of one prompt's search; node i is ``nodes[i]``."""

    def __init__(self, root_seed: int):
        self.nodes = [Node(0, -1, (), root_seed)]

    def add(self, parent: Node, **step) -> Node:
        """A new child of parent (its path extends parent's by the child's index)."""
        node = Node(len(self.nodes), parent.node_id, (*parent.path, len(parent.children)), **step)
        self.nodes.append(node)
        parent.children.append(node.node_id)
        return node

    def lineage(self, node: Node) -> list[Node]:
        """The nodes from the root's first child down to node (the steps of node's partial response)."""
        out = []
        while node.parent >= 0:
            out.append(node)
            node = self.nodes[node.parent]
        return out[::-1]

    def closed(self, node: Node) -> bool:
        """Nothing left to expand below node: it is a finished response, or every child's subtree is closed."""
        if node.terminal:
            return True
        return bool(node.children) and all(self.closed(self.nodes[c]) for c in node.children)

    def select(self, c_puct: float) -> Node | None:
        """The node to expand next (PUCT from the root down to a node without children); None when the whole tree is
        closed. Ties go to the earlier child, so the choice is deterministic."""
        node = self.nodes[0]
        if self.closed(node):
            return None
        while node.children:
            open_ = [self.nodes[c] for c in node.children if not self.closed(self.nodes[c])]
            prior = 1.0 / len(node.children)
            explore = c_puct * prior * math.sqrt(node.visits)
            node = max(open_, key=lambda ch: (ch.q + explore / (1 + ch.visits), -ch.node_id))
        return node

    def backup(self, node: Node, value: float) -> None:
        """node's value, counted once in it and in each of its ancestors."""
        node.value = value
        while True:
            node.visits += 1
            node.value_sum += value
            if node.parent < 0:
                return
            node = self.nodes[node.parent]


def smoothing(better_visits: int, worse_visits: int) -> float:
    """MCTS-DPO's label smoothing for a step pair, from the two siblings' visit counts (Xie et al. 2024, as in
    their code: N_w the worse step's visits, N_b the better's): eps = min(1 - 1 / (1 + N_w / max(1, N_b)), 0.5).
    0 when the search never went back to the worse step, up to 0.5 as it visited the worse step as often as the
    better one: a preference the search itself was unsure of counts for less."""
    ratio = max(0, worse_visits) / max(1, better_visits)
    return min(1.0 - 1.0 / (1.0 + ratio), 0.5)
