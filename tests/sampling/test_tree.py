"""The search tree's bookkeeping: PUCT selection, backup, closed subtrees, MCTS-DPO's smoothing."""

import math

import pytest

from iterpo.sampling.tree import Tree, smoothing


def _grow(tree, parent, k, finish=""):
    return [tree.add(parent, seed=j, token_ids=[j], policy_mask=[True], finish_reason=finish) for j in range(k)]


def test_backup_counts_a_value_once_in_the_node_and_each_ancestor():
    tree = Tree(root_seed=7)
    a, b = _grow(tree, tree.nodes[0], 2)
    (c,) = _grow(tree, a, 1)
    for node, value in ((a, 1.0), (b, 0.0), (c, 0.5)):
        tree.backup(node, value)
    root = tree.nodes[0]
    assert (root.visits, root.value_sum) == (3, 1.5)
    assert (a.visits, a.value_sum, a.q) == (2, 1.5, 0.75) and (b.visits, b.q) == (1, 0.0)
    assert c.path == (0, 0) and c.value == 0.5 and [x.node_id for x in tree.lineage(c)] == [a.node_id, c.node_id]


def test_puct_prefers_value_then_explores_the_less_visited():
    tree = Tree(root_seed=0)
    a, b = _grow(tree, tree.nodes[0], 2)
    tree.backup(a, 1.0)
    tree.backup(b, 0.0)
    assert tree.select(c_puct=0.0) is a  # greedy on Q
    for _ in range(20):  # a visited far more than b: exploration turns to b
        (x,) = _grow(tree, tree.select(c_puct=0.0), 1)
        tree.backup(x, 0.9)
    n, na, nb = tree.nodes[0].visits, a.visits, b.visits
    big = 5.0
    # PUCT score of each child: Q + c * (1/2) * sqrt(N) / (1 + N_child)
    want = a if a.q + big * 0.5 * math.sqrt(n) / (1 + na) >= b.q + big * 0.5 * math.sqrt(n) / (1 + nb) else b
    assert want is b
    node = tree.select(c_puct=big)
    assert node is b or node in [tree.nodes[c] for c in b.children]


def test_closed_subtrees_are_never_selected_and_a_closed_tree_gives_none():
    tree = Tree(root_seed=0)
    a, b = _grow(tree, tree.nodes[0], 2)
    tree.backup(a, 1.0)
    tree.backup(b, 0.0)
    for x in _grow(tree, a, 2, finish="stop"):  # a's children end the response: a is closed
        tree.backup(x, 1.0)
    assert tree.closed(a) and not tree.closed(b)
    assert tree.select(c_puct=0.0) is b  # b is worse, but the only open subtree
    for x in _grow(tree, b, 2, finish="length"):
        tree.backup(x, 0.0)
    assert tree.closed(tree.nodes[0]) and tree.select(c_puct=1.0) is None


def test_mcts_dpo_smoothing_lies_in_zero_to_half_and_follows_the_visit_ratio():
    for better in range(0, 40):
        for worse in range(0, 40):
            assert 0.0 <= smoothing(better, worse) <= 0.5
    assert smoothing(10, 0) == 0.0  # the search never went back to the worse step: no smoothing
    assert smoothing(4, 1) == pytest.approx(1 - 1 / (1 + 1 / 4))
    assert smoothing(3, 3) == 0.5 and smoothing(1, 9) == 0.5  # as often, or more: the cap
    assert smoothing(8, 2) < smoothing(8, 4) < smoothing(8, 8)
