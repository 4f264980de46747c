"""Typed records passed between stages, and their Arrow schemas for the store.

One row is one item with a stable id: a prompt is ``prompt_id``; a response
is ``(prompt_id, source, sample_idx)`` within a round. ``source`` says where a
response came from, as data: ``policy`` (the round's sampling policy),
``initial`` (the initial model's, i.e. round 1's samples, when a later round
pairs against them), ``look_ahead`` (a look-ahead copy of the policy), or the
name of another sampling stage of the round. Examples name their responses by
source and index.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Protocol, TypeVar

import pyarrow as pa


@dataclass
class Prompt:
    prompt_id: str  # stable across rounds and runs
    messages: list[dict[str, str]]  # chat messages [{"role": "user", "content": ...}, ...]
    answer: str | None = None  # reference answer for verifiers
    user: str | None = None  # who asks, for personalized preferences (the few-shot examples are in messages)

    @property
    def text(self) -> str:
        """The last user message, for tables and exports."""
        return self.messages[-1]["content"]


@dataclass
class Rollout:
    prompt_id: str
    sample_idx: int  # 0..K-1 within the prompt
    round: int
    seed: int  # derived from (run seed, round, prompt id, sample index); 0 for an enumerated response
    text: (
        str  # what judges read: the decoded response (a trajectory's: its final turn; with reasoning: the answer after
    )
    # it), special tokens removed
    token_ids: list[int]  # (T_resp,) the response's tokens, including the final EOS if it stopped
    finish_reason: str  # "stop" (EOS), "length" (max_new_tokens or the token budget), "turns" (the turn limit)
    source: str = "policy"  # where the response came from (see the module docstring)
    weight: float | None = None  # sampling.exhaustive: the response's probability under the sampling policy
    policy_mask: list[bool] = field(default_factory=list)  # (T_resp,) True where the policy produced the token, or
    # empty: all of them. The others (a tool's observations, a step's shared prefix) are context: read, never trained
    step_ends: list[int] = field(default_factory=list)  # token offsets where each step ends; empty: one step
    transcript: str | None = None  # a trajectory of several turns: all of it as text, observations included
    observations: list[str] = field(default_factory=list)  # a trajectory's tool answers, in order (one per call)
    reasoning: str | None = None  # with a reasoning section: the reasoning before the answer, markers included
    reasoning_tokens: int = 0  # how many leading tokens are reasoning (through the end marker)
    parent: int | None = None  # a refinement: the sample_idx of the response of the same prompt it revises
    context: list[dict[str, str]] = field(default_factory=list)  # chat messages between the prompt's and the
    # response, which it was generated after (a refinement's: [assistant: the parent, user: the request]); empty:
    # generated for the prompt alone. Judges and direct-format training read the response as an answer to the prompt

    @property
    def policy_tokens(self) -> int:
        """How many of its tokens the policy produced (what length penalties and length-normalised losses count)."""
        return sum(self.policy_mask) if self.policy_mask else len(self.token_ids)


@dataclass
class Judgement:
    prompt_id: str
    sample_idx: int
    judge: str  # judge name
    score: float  # 1.0 correct / 0.0 incorrect for verifiers; higher is better for every judge
    detail: str  # what the judge extracted, its rationale, or why it failed
    failed: bool = False  # the judge could not judge this response (detail says why); pairing leaves it out
    uncertainty: float | None = None  # e.g. ensemble disagreement, or MC-dropout BALD
    win_rate: float | None = None  # pairwise judges: estimated P(this response beats the sampling policy)
    beats: list[float] = field(default_factory=list)  # pairwise judges: (K,) P(this beats sample j); NaN when unknown
    samples: list[float] = field(default_factory=list)  # (S,) per-pass scores (MC-dropout passes, ensemble members)
    visits: int | None = None  # a tree search's node: evaluations backed up through it (score is their mean, Q)
    rationale: str | None = None  # a judge that explains (self_judge): its written reasoning for this verdict
    rationales: list[str] = field(default_factory=list)  # a pairwise judge that explains: (K,) its reply comparing
    # this response with sample j ("" where it gave none)


@dataclass
class Preference:
    prompt_id: str
    chosen_idx: int  # sample_idx of the chosen rollout
    rejected_idx: int  # sample_idx of the rejected rollout
    prompt: str  # the prompt's last user message
    chosen: str  # response texts, the layout TRL reads
    rejected: str
    chosen_score: float
    rejected_score: float
    soft_label: float = 1.0  # estimated P(chosen beats rejected), sigmoid(score difference)
    chosen_win_rate: float = 0.5  # estimated P(chosen beats the policy that sampled it), among the K samples
    rejected_win_rate: float = 0.5
    aux_idxs: list[int] = field(
        default_factory=list
    )  # extra samples of the prompt (source policy), for losses that need them
    chosen_source: str = "policy"  # where the chosen and rejected responses came from
    rejected_source: str = "policy"
    weight: float = 1.0  # the pair's weight in the loss (all_pairs weighted: pi(chosen) pi(rejected) soft_label)
    margin: float = 0.0  # a target reward margin the loss asks of the pair (the strength stage's adaptive margin)
    shared_prefix: int = 0  # leading tokens both responses share (a step pair's steps before the divergence
    # point): context, read but never trained on
    context: list[dict[str, str]] = field(default_factory=list)  # chat messages after the prompt's that the pair
    # is trained after (a refinement pair in the refine format: the earlier answer and the request to improve it)
    side: list[dict[str, str]] = field(default_factory=list)  # side targets: {request, target} texts the policy
    # also learns to write, each after its own request (a rationale; the degree of removed content)


@dataclass
class LabelledResponse:
    """One response labelled desirable or not (KTO's data; TRL's prompt/completion/label layout)."""

    prompt_id: str
    sample_idx: int
    prompt: str
    completion: str
    label: bool  # desirable
    score: float
    kl_prompt_id: str  # the response paired with this prompt for KTO's reference point: another prompt's ...
    kl_sample_idx: int  # ... sample, so (x, y') is a mismatched pair
    source: str = "policy"
    kl_source: str = "policy"


@dataclass
class RankedGroup:
    """Responses to one prompt with their scores: best first for ranked losses (PRO, TPO); every sample in sample
    order, with its reward, for policy-gradient losses."""

    prompt_id: str
    prompt: str
    sample_idxs: list[int]
    responses: list[str]
    scores: list[float]  # non-increasing for ranked losses
    sources: list[str] = field(default_factory=list)  # where each response came from
    weights: list[float] = field(default_factory=list)  # each response's probability (sampling.exhaustive), or empty
    shared_prefix: int = 0  # leading tokens every response of the group shares (sibling steps' common steps): context


@dataclass
class TreeNode:
    """One node of a prompt's search tree (the tree_search stage's tree.parquet): a step and its statistics."""

    prompt_id: str
    node_id: int  # 0 is the root (the prompt itself); a node's rollout has sample_idx node_id
    parent: int  # -1 for the root
    path: list[int]  # child indices from the root
    seed: int  # the seed its step was sampled with, derived from (run seed, round, prompt id, path)
    token_ids: list[int]  # (T_step,) the step's tokens, a tool's answer after it included
    policy_mask: list[bool]  # (T_step,) False on a tool's answer
    text: str  # the step as text
    observation: str | None  # the tool's answer to a call in the step
    finish_reason: str  # "" when the response goes on after the step, else why it ended there
    value: float | None  # the node's own evaluation (None for the root)
    visits: int  # N: evaluations backed up through the node
    value_sum: float  # their sum (Q = value_sum / visits)


@dataclass
class RefLogp:
    prompt_id: str  # the prompt the response is scored after
    response_prompt_id: str  # the prompt the response was sampled for (differs for KTO's mismatched pairs)
    sample_idx: int
    ref_logp: float | None  # sum of reference token log-probs of the response (None when not needed)
    prev_logp: float | None = None  # the same under the policy the round started from
    source: str = "policy"  # where the response came from
    context: str = ""  # the chat messages after the prompt's it is scored after, as canonical JSON ("" for none)


# Every record type above; R is one of them.
Record = Prompt | Rollout | Judgement | Preference | LabelledResponse | RankedGroup | RefLogp | TreeNode
R = TypeVar("R", bound=Record)

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))  # chat messages, in order

SCHEMAS = {
    Rollout: pa.schema(
        [
            ("prompt_id", pa.string()),
            ("sample_idx", pa.int32()),
            ("round", pa.int32()),
            ("seed", pa.int64()),
            ("text", pa.string()),
            ("token_ids", pa.list_(pa.int32())),
            ("finish_reason", pa.string()),
            ("source", pa.string()),
            ("weight", pa.float64()),
            ("policy_mask", pa.list_(pa.bool_())),
            ("step_ends", pa.list_(pa.int32())),
            ("transcript", pa.string()),
            ("observations", pa.list_(pa.string())),
            ("reasoning", pa.string()),
            ("reasoning_tokens", pa.int32()),
            ("parent", pa.int32()),
            ("context", MESSAGES),
        ]
    ),
    Judgement: pa.schema(
        [
            ("prompt_id", pa.string()),
            ("sample_idx", pa.int32()),
            ("judge", pa.string()),
            ("score", pa.float64()),
            ("detail", pa.string()),
            ("failed", pa.bool_()),
            ("uncertainty", pa.float64()),
            ("win_rate", pa.float64()),
            ("beats", pa.list_(pa.float64())),
            ("samples", pa.list_(pa.float64())),
            ("visits", pa.int32()),
            ("rationale", pa.string()),
            ("rationales", pa.list_(pa.string())),
        ]
    ),
    Preference: pa.schema(
        [
            ("prompt_id", pa.string()),
            ("chosen_idx", pa.int32()),
            ("rejected_idx", pa.int32()),
            ("prompt", pa.string()),
            ("chosen", pa.string()),
            ("rejected", pa.string()),
            ("chosen_score", pa.float64()),
            ("rejected_score", pa.float64()),
            ("soft_label", pa.float64()),
            ("chosen_win_rate", pa.float64()),
            ("rejected_win_rate", pa.float64()),
            ("aux_idxs", pa.list_(pa.int32())),
            ("chosen_source", pa.string()),
            ("rejected_source", pa.string()),
            ("weight", pa.float64()),
            ("margin", pa.float64()),
            ("shared_prefix", pa.int32()),
            ("context", MESSAGES),
            ("side", pa.list_(pa.struct([("request", pa.string()), ("target", pa.string())]))),
        ]
    ),
    LabelledResponse: pa.schema(
        [
            ("prompt_id", pa.string()),
            ("sample_idx", pa.int32()),
            ("prompt", pa.string()),
            ("completion", pa.string()),
            ("label", pa.bool_()),
            ("score", pa.float64()),
            ("kl_prompt_id", pa.string()),
            ("kl_sample_idx", pa.int32()),
            ("source", pa.string()),
            ("kl_source", pa.string()),
        ]
    ),
    RankedGroup: pa.schema(
        [
            ("prompt_id", pa.string()),
            ("prompt", pa.string()),
            ("sample_idxs", pa.list_(pa.int32())),
            ("responses", pa.list_(pa.string())),
            ("scores", pa.list_(pa.float64())),
            ("sources", pa.list_(pa.string())),
            ("weights", pa.list_(pa.float64())),
            ("shared_prefix", pa.int32()),
        ]
    ),
    TreeNode: pa.schema(
        [
            ("prompt_id", pa.string()),
            ("node_id", pa.int32()),
            ("parent", pa.int32()),
            ("path", pa.list_(pa.int32())),
            ("seed", pa.int64()),
            ("token_ids", pa.list_(pa.int32())),
            ("policy_mask", pa.list_(pa.bool_())),
            ("text", pa.string()),
            ("observation", pa.string()),
            ("finish_reason", pa.string()),
            ("value", pa.float64()),
            ("visits", pa.int32()),
            ("value_sum", pa.float64()),
        ]
    ),
    RefLogp: pa.schema(
        [
            ("prompt_id", pa.string()),
            ("response_prompt_id", pa.string()),
            ("sample_idx", pa.int32()),
            ("ref_logp", pa.float64()),
            ("prev_logp", pa.float64()),
            ("source", pa.string()),
            ("context", pa.string()),
        ]
    ),
    Prompt: pa.schema(
        [("prompt_id", pa.string()), ("messages", pa.string()), ("answer", pa.string()), ("user", pa.string())]
    ),
}


def to_table(records: Sequence[Record], cls: type[Record]) -> pa.Table:
    rows = [asdict(r) for r in records]
    if cls is Prompt:
        for row in rows:
            row["messages"] = json.dumps(row["messages"])
    return pa.Table.from_pylist(rows, schema=SCHEMAS[cls])


def from_table(table: pa.Table, cls: type[R]) -> list[R]:
    names = {f.name for f in fields(cls)}
    out: list[R] = []
    for row in table.to_pylist():
        row = {k: v for k, v in row.items() if k in names}
        if cls is Prompt:
            row["messages"] = json.loads(row["messages"])
        out.append(cls(**row))
    return out


class OfPrompt(Protocol):
    prompt_id: str


P = TypeVar("P", bound=OfPrompt)


def by_prompt(items: Iterable[P]) -> dict[str, list[P]]:
    """Items (responses, pairs) grouped by prompt id: prompts in the order of their first item, each prompt's items
    in their own order."""
    out: dict[str, list[P]] = {}
    for x in items:
        out.setdefault(x.prompt_id, []).append(x)
    return out
