"""Mutual ranking of generated code and tests (CodeDPO), checked against values worked out by hand."""

import pytest

from iterpo.judges.mutual import mutual_scores
from iterpo.stages.self_tests import asserts_of


def test_one_step_by_hand_and_the_consensus_it_converges_to():
    passes = [[True, True, False], [True, False, False], [False, False, True]]
    # one step from uniform scores, d = 0.5: code = 0.5/3 + 0.5 * (tests it passes)/3, then normalised
    code, test = mutual_scores(passes, damping=0.5, iterations=1)
    raw_code = [1 / 6 + 0.5 * 2 / 3, 1 / 6 + 0.5 * 1 / 3, 1 / 6 + 0.5 * 1 / 3]
    raw_test = [1 / 6 + 0.5 * 2 / 3, 1 / 6 + 0.5 * 1 / 3, 1 / 6 + 0.5 * 1 / 3]
    assert code == pytest.approx([x / sum(raw_code) for x in raw_code])
    assert test == pytest.approx([x / sum(raw_test) for x in raw_test])
    # at convergence the largest cluster of agreeing code and tests holds the credit
    code, test = mutual_scores(passes)
    assert code[0] > code[1] > code[2] and test[0] > test[1] > test[2]
    assert sum(code) == pytest.approx(1) and sum(test) == pytest.approx(1)


def test_no_evidence_leaves_everything_equal():
    assert mutual_scores([[False, False], [False, False]]) == ([0.5, 0.5], [0.5, 0.5])
    assert mutual_scores([[True], [True]]) == ([0.5, 0.5], [1.0])
    assert mutual_scores([]) == ([], [])


def test_asserts_are_read_one_line_at_a_time_and_must_parse():
    reply = "Here:\n```python\nassert f(1) == 2\nassert f(2 == \nprint(3)\n  assert f(0) == 0  \nassert x; y\n```"
    assert asserts_of(reply) == ["assert f(1) == 2", "assert f(0) == 0"]
