"""Pairs along refinement chains: a revision against the response it revises.

The refine stage asks the policy to critique and improve its own answers
(Rollout.parent names the revised response, Rollout.context the request it was
generated after). A chain y0 -> y1 -> y2 gives one candidate pair per edge, the
better of the two chosen:

- EVOLVE (Zeng et al. 2025, "Evolving LLMs' Self-Refinement Capability via
  Iterative Preference Optimization") trains on such pairs in two formats: as
  answers to the question itself (``direct``), and after the refinement request,
  with the earlier answer in the context (``refine``), so the model learns both
  to answer and to improve an answer; ``both`` gives each pair in each format.
- SPHERE (Singh et al. 2025, "Self-Evolved Preference Optimization for Enhancing
  Mathematical Reasoning in Small Language Models") pairs a corrected solution
  with the erroneous one it fixed (``direction: improved``), beside pairs of
  correct and incorrect samples (``samples``), keeping distinct solutions.
- ReAgent-V-style reflection (Zhou et al. 2025) revises from several perspectives
  and keeps only revisions the judge rates well (``min_chosen``).
"""

from __future__ import annotations

from dataclasses import dataclass

from iterpo.pairing.base import Candidate, Example, Strategy, preference, register_pairing

FORMATS = ("direct", "refine", "both")
DIRECTIONS = ("better", "improved")


@register_pairing("refinement")
@dataclass
class Refinement(Strategy):
    """Per refinement whose score differs from its parent's by at least ``margin``: the better of the two chosen
    (``direction: better``), or only refinements that beat their parent (``improved``: corrected vs erroneous);
    the largest gaps first, up to pairs_per_prompt, no two sharing a chosen or a rejected response."""

    keeps_duplicates = True  # a refinement that repeats its parent stays, so the chain goes on through it

    direction: str = "better"
    """'better': the better of (parent, refinement) is chosen, so a revision that made the answer worse teaches
    keeping it; 'improved': only refinements better than their parent (corrected vs erroneous)."""
    prompt_format: str = "direct"
    """'direct': pairs are answers to the prompt; 'refine': pairs follow the refinement's request (the earlier
    answer in the context); 'both': each pair in each format (EVOLVE)."""
    margin: float = 0.0
    """Smallest score difference between a refinement and its parent."""
    min_chosen: float | None = None
    """A pair's chosen response must score at least this (reward-filtered pairs); default: no filter."""
    samples: bool = False
    """Also pair the prompt's first responses (those no refinement revised into being): best against worst,
    when they differ by the margin."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}")
        if self.prompt_format not in FORMATS:
            raise ValueError(f"prompt_format must be one of {', '.join(FORMATS)}, got {self.prompt_format!r}")
        if self.margin < 0:
            raise ValueError(f"margin must be at least 0, got {self.margin}")

    def examples(self, prompt, cands, rng, initial=None):
        by_idx = {c.idx: c for c in cands}
        edges: list[tuple[float, Candidate, Candidate, Candidate | None]] = []  # (gap, chosen, rejected, child)
        refined = [c for c in cands if c.rollout.parent is not None]
        for child in refined:
            parent = by_idx.get(child.rollout.parent)
            if parent is None:  # its parent's verdict failed
                continue
            better, worse = (child, parent) if child.score > parent.score else (parent, child)
            if self.direction == "improved" and better is parent:
                continue
            edges.append((better.score - worse.score, better, worse, child))
        if self.samples:
            first = [c for c in cands if c.rollout.parent is None]
            if len(first) >= 2:
                best, worst = self.ranked(first)[0], self.worst_first(first)[0]
                edges.append((best.score - worst.score, best, worst, None))
        edges = [e for e in edges if e[0] > 0 and e[0] >= self.margin]
        if self.min_chosen is not None:
            edges = [e for e in edges if e[1].score >= self.min_chosen]
        if not edges:
            if not refined:
                return [], "no refinements"
            return [], "no refinement differs from its parent by the margin"
        edges.sort(key=lambda e: -e[0])  # the largest gaps first (a stable sort: ties keep sample order)
        out: list[Example] = []
        used_chosen: set[tuple[int, ...]] = set()
        used_rejected: set[tuple[int, ...]] = set()
        for _, chosen, rejected, child in edges:
            a, b = tuple(chosen.rollout.token_ids), tuple(rejected.rollout.token_ids)
            if a == b or a in used_chosen or b in used_rejected:
                continue  # identical, or repeating a response already paired: keep the pairs distinct
            used_chosen.add(a)
            used_rejected.add(b)
            if self.prompt_format in ("direct", "both") or child is None:
                out.append(preference(prompt, chosen, rejected))
            if self.prompt_format in ("refine", "both") and child is not None:
                pair = preference(prompt, chosen, rejected)
                pair.context = [dict(m) for m in child.rollout.context]
                out.append(pair)
            if len(used_chosen) >= self.shared().pairs_per_prompt:
                break
        if not out:
            return [], "every pair repeats a response"
        return out, None
