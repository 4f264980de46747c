"""Sequence log-probs of many responses, computing only the tokens that matter.

Preference losses need log pi(y | x) for several responses y to the same
prompt x (chosen and rejected, extra samples, a ranked group). A plain batch
runs ``prompt + response`` once per response, padded to the longest sequence,
and applies the 49k-wide output layer at every position. This module does the
same math on fewer tokens:

- ``shared_prompt``: a prompt and all its responses form one *group*,
  ``[x, y_1, y_2, ...]``, where each response restarts its positions after the
  prompt and an attention mask keeps the responses apart. The prompt runs once.
- ``padding_free``: a batch's groups are laid end to end in one row, with no
  padding tokens; attention stays within a group.
- ``response_logits``: the output layer runs only at positions that predict a
  response token, in chunks of rows, and its backward recomputes each chunk, so
  a (tokens x vocab) float32 tensor never exists.
- ``grads_in_place`` (with ``response_logits``, when training): the output
  layer's backward adds its weight gradient straight into ``.grad``, and a
  tied input embedding (one matrix for both ends, as in SmolLM2) passes back
  only the rows of the pass's tokens, added in place after it, so backward
  makes no (vocab x hidden) temporary: 3 of them before (the output layer's
  gradient, the embedding's, their sum: 340 MB for SmolLM2-135M). It assumes
  gradients are taken with ``.backward()``, as training does, not
  ``torch.autograd.grad``.
- ``lean_layers`` (training): RMSNorms and gated MLPs keep fewer activations for
  the backward (models/lean.py).

Each switch keeps the log-probs equal to the plain computation (up to float
summation order); they exist as switches so the benchmark can measure each.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from iterpo.models.device import model_device, score_dtype, tensors_to

# (prompt ids, its responses' ids), optionally with, per response, which of its tokens the policy produced:
# the others (a tool's or an environment's observations inside a trajectory) are context the policy reads but is
# never scored or trained on
Group = tuple[list[int], list[list[int]]] | tuple[list[int], list[list[int]], list[list[bool]]]


def group(prompt: list[int], responses: list[list[int]], masks: Sequence[list[bool] | None]) -> Group:
    """A Group; per-token masks (None: every token is the policy's) are kept only when some response has any."""
    if all(m is None for m in masks):
        return (prompt, responses)
    return (prompt, responses, [m if m is not None else [True] * len(r) for r, m in zip(responses, masks)])


@dataclass(frozen=True)
class Layout:
    """Which token-saving steps to take. The default takes all of them."""

    shared_prompt: bool = True
    padding_free: bool = True
    response_logits: bool = True
    chunk_rows: int = 1024  # positions per output-layer chunk (response_logits)
    grads_in_place: bool = True
    lean_layers: bool = True


PLAIN = Layout(shared_prompt=False, padding_free=False, response_logits=False)


@dataclass
class Packed:
    """A batch of G groups laid out for one forward pass. R x L tokens; M response tokens; n responses.

    Attention always works on groups: ``attention_mask`` is one (Lg x Lg) block
    per group. Padded layout: row g is group g (R = G, L = Lg). Padding-free:
    one row of every group's tokens end to end (R = 1, L = N), and ``blocks``
    says where each group's tokens sit in it.
    """

    input_ids: torch.Tensor  # (R, L) token ids, pad_id where padded
    position_ids: torch.Tensor  # (R, L) position of each token within its own prompt + response
    attention_mask: torch.Tensor  # (G, 1, Lg, Lg) bool, True where query (row) may attend to key (column)
    blocks: torch.Tensor | None  # (G, Lg) index into the row of each group's tokens (padding-free only; 0 on padding)
    real: torch.Tensor  # (G, Lg) bool, True on a group's real tokens
    predict_at: torch.Tensor  # (M,) flat index (r * L + t) of the position predicting each response token
    targets: torch.Tensor  # (M,) the response token predicted there
    owner: torch.Tensor  # (M,) which response (0..n-1, group by group) the token belongs to
    n: int  # number of responses
    tokens: int  # real (non-padding) tokens in the batch


def pack(groups: Sequence[Group], layout: Layout = Layout(), pad_id: int = 0) -> Packed:
    """Lay out groups as ``layout`` says; responses are numbered group by group, in order."""
    if not layout.shared_prompt:  # each response with its own copy of the prompt
        groups = [
            (g[0], [r], [g[2][j]] if len(g) == 3 else [[True] * len(r)]) for g in groups for j, r in enumerate(g[1])
        ]
    G = len(groups)
    # per group: token ids, positions, branch (0: the prompt, seen by every response; j + 1: response j)
    toks, poss, branches = [], [], []
    predict: list[tuple[int, int]] = []  # (group, index within group) predicting each response token
    targets: list[int] = []
    owner: list[int] = []
    n = 0
    for g, group in enumerate(groups):
        prompt, responses = group[0], group[1]
        produced = group[2] if len(group) == 3 else [[True] * len(r) for r in responses]
        if not prompt or not responses or any(not r for r in responses):
            raise ValueError("every prompt and response needs at least one token")
        if [len(m) for m in produced] != [len(r) for r in responses]:
            raise ValueError("a response's token mask must have one entry per token")
        tok, tok_pos, tok_branch = list(prompt), list(range(len(prompt))), [0] * len(prompt)
        for j, response in enumerate(responses):
            first = len(tok)
            tok += response
            tok_pos += range(len(prompt), len(prompt) + len(response))
            tok_branch += [j + 1] * len(response)
            # token 0 is predicted by the prompt's last position, token k by response token k - 1; only the
            # tokens the policy produced are predicted (observations are read, never scored)
            position = [(g, len(prompt) - 1)] + [(g, first + k) for k in range(len(response) - 1)]
            keep = [k for k in range(len(response)) if produced[j][k]]
            predict += [position[k] for k in keep]
            targets += [response[k] for k in keep]
            owner += [n] * len(keep)
            n += 1
        toks.append(tok)
        poss.append(tok_pos)
        branches.append(tok_branch)
    lengths = torch.tensor([len(t) for t in toks])  # (G,)
    Lg = int(lengths.max())
    real = torch.arange(Lg).unsqueeze(0) < lengths.unsqueeze(1)  # (G, Lg)
    branch = torch.zeros((G, Lg), dtype=torch.long)
    for g, b in enumerate(branches):
        branch[g, : len(b)] = torch.tensor(b)
    causal = torch.ones(Lg, Lg, dtype=torch.bool).tril()  # key index <= query index
    visible = (branch.unsqueeze(1) == 0) | (branch.unsqueeze(2) == branch.unsqueeze(1))  # (G, Lg, Lg)
    mask = causal & visible & real.unsqueeze(1) & real.unsqueeze(2)
    mask |= torch.eye(Lg, dtype=torch.bool) & ~real.unsqueeze(2)  # a padding query sees itself (no NaN rows)
    at = torch.tensor(predict, dtype=torch.long).view(-1, 2)  # (M, 2)
    if layout.padding_free:
        offsets = torch.cumsum(lengths, 0) - lengths  # (G,) where each group starts in the row
        ids = torch.tensor([t for tok in toks for t in tok]).unsqueeze(0)  # (1, N)
        pos = torch.tensor([p for ps in poss for p in ps]).unsqueeze(0)
        blocks = (offsets.unsqueeze(1) + torch.arange(Lg)) * real  # (G, Lg)
        predict_at = offsets[at[:, 0]] + at[:, 1]
    else:
        ids = torch.full((G, Lg), pad_id, dtype=torch.long)
        pos = torch.zeros((G, Lg), dtype=torch.long)
        for g in range(G):
            ids[g, : lengths[g]], pos[g, : lengths[g]] = torch.tensor(toks[g]), torch.tensor(poss[g])
        blocks, predict_at = None, at[:, 0] * Lg + at[:, 1]
    return Packed(
        input_ids=ids,
        position_ids=pos,
        attention_mask=mask.unsqueeze(1),
        blocks=blocks,
        real=real,
        predict_at=predict_at,
        targets=torch.tensor(targets, dtype=torch.long),
        owner=torch.tensor(owner, dtype=torch.long),
        n=n,
        tokens=int(lengths.sum()),
    )


BLOCKED = "iterpo_blocked"  # the attention implementation name registered below


def _blocked_attention(module, query, key, value, attention_mask, blocks=None, real=None, **kwargs):
    """Attention within groups for a padding-free row: gather each group's tokens into a block, attend, scatter back.

    query (1, Hq, N, D), key/value (1, Hkv, N, D), attention_mask (G, 1, Lg, Lg),
    blocks and real (G, Lg). The dense (N x N) alternative spends most of its work on
    pairs of tokens from different groups. Without ``blocks`` this is plain SDPA,
    so a model left in this mode still generates normally. On the CPU, fewer
    key/value heads than query heads (grouped-query attention) go to the kernel as
    they are; transformers would copy each once per query head it serves (the same
    result, more memory kept for the backward).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if blocks is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    G, Lg = blocks.shape
    flat = blocks.reshape(-1)  # (G * Lg,)

    def gather(x):  # (1, H, N, D) -> (G, H, Lg, D)
        return x[0].index_select(1, flat).unflatten(1, (G, Lg)).transpose(0, 1)

    query, key, value = gather(query), gather(key), gather(value)
    if _native_gqa(module, query, kwargs):
        # PyTorch's CPU kernel takes fewer key/value heads than query heads (and a mask) as they are, where
        # transformers would first copy each key/value head once per query head it serves
        out = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=kwargs.get("dropout", 0.0),
            scale=kwargs.get("scaling"),
            enable_gqa=True,
        ).transpose(1, 2)
    else:
        out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    # out (G, Lg, Hq, D); the real slots, row-major, are the row's tokens in order
    return out.flatten(0, 1)[real.reshape(-1)].unsqueeze(0), None  # (1, N, Hq, D)


_GQA_KWARGS = {"dropout", "scaling", "position_ids", "use_cache"}  # what _blocked_attention passes on or ignores
_SDPA_TAKES_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)  # its enable_gqa argument


def _native_gqa(module, query: torch.Tensor, kwargs: dict) -> bool:
    """Whether to run grouped-query attention without repeating key/value heads: on the CPU (CUDA's kernels
    that take a mask do not take fewer key/value heads), where the call carries nothing that transformers'
    SDPA path would treat specially."""
    return (
        _SDPA_TAKES_GQA
        and query.device.type == "cpu"
        and getattr(module, "num_key_value_groups", 1) > 1
        and set(kwargs) <= _GQA_KWARGS
    )


def _register_blocked_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(BLOCKED, _blocked_attention)
    AttentionMaskInterface.register(BLOCKED, sdpa_mask)


@contextmanager
def packed_attention(model):
    """Let the model run padding-free packs: its attention becomes the blocked one (plain SDPA for anything else).

    Training holds this for its whole length, because gradient checkpointing
    re-runs the forward pass during the backward, outside token_logps.
    """
    _register_blocked_attention()
    config = model.config
    own = config._attn_implementation
    config._attn_implementation = BLOCKED
    try:
        yield
    finally:
        config._attn_implementation = own


class _ChunkedTokenLogps(torch.autograd.Function):
    """log softmax(h W^T)[target] per row, in chunks of rows; the backward recomputes each chunk's logits.

    Memory: O(chunk x vocab) instead of O(rows x vocab), at the price of one more
    output-layer matmul over the response tokens. Both passes compute the logits
    in the output layer's own dtype, also under autocast (the backward runs
    outside it), so the recomputed softmax is the one the forward normalised.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, in_place):  # hidden (M, H), weight (V, H), targets (M,)
        wide = score_dtype(weight.dtype)
        out = hidden.new_empty(hidden.shape[0], dtype=wide)
        lse = hidden.new_empty(hidden.shape[0], dtype=wide)
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, hidden.shape[0], chunk):
                logits = (hidden[s : s + chunk].to(weight.dtype) @ weight.T).to(wide)  # (c, V)
                picked = logits.gather(1, targets[s : s + chunk, None]).squeeze(1)  # (c,)
                top = logits.amax(dim=-1, keepdim=True)  # (c, 1)
                # log-sum-exp in the logits' own buffer (torch.logsumexp would take a second (c, V) tensor)
                lse[s : s + chunk] = logits.sub_(top).exp_().sum(dim=-1).log_() + top.squeeze(1)
                out[s : s + chunk] = picked - lse[s : s + chunk]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk = chunk
        ctx.into = weight if in_place else None  # the parameter whose .grad the backward adds to itself
        return out

    @staticmethod
    def backward(ctx, grad_out):  # grad_out (M,)
        hidden, weight, targets, lse = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            into = ctx.into.grad if ctx.into is not None else None
            grad_weight = torch.zeros_like(weight) if into is None else into
        for s in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[s : s + ctx.chunk].to(weight.dtype)
            logits = (h @ weight.T).to(lse.dtype)  # (c, V)
            # d logp[target] / d logits = onehot(target) - softmax, in the logits' own buffer
            grad_logits = logits.sub_(lse[s : s + ctx.chunk, None]).exp_().mul_(-grad_out[s : s + ctx.chunk, None])
            grad_logits.scatter_add_(1, targets[s : s + ctx.chunk, None], grad_out[s : s + ctx.chunk, None])
            grad_logits = grad_logits.to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden[s : s + ctx.chunk] = (grad_logits @ weight).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.T, h)
        if ctx.into is not None and grad_weight is not None:
            if ctx.into.grad is None:
                ctx.into.grad = grad_weight
            grad_weight = None  # already in .grad: autograd gets nothing to hold or add
        return grad_hidden, grad_weight, None, None, None


def _parts(model):
    """(backbone, output layer) of a causal LM, through a PEFT wrapper if there is one."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.get_decoder(), inner.get_output_embeddings()


def _sharded(model) -> bool:
    """Whether FSDP shards the model (training on several processes): then only its own forward gathers the
    weights, so the backbone and the output layer cannot be called one by one."""
    fsdp = sys.modules.get("torch.distributed.fsdp")  # not imported: nothing is sharded (and no import cost)
    kind = getattr(fsdp, "FSDPModule", None)  # PyTorch before 2.6 has none
    return kind is not None and isinstance(model, kind)


def _plain_tied(backbone, weight) -> Any:
    """The backbone's input embedding where it is a plain lookup of the output layer's own weight (tied),
    else None."""
    get = getattr(backbone, "get_input_embeddings", None)  # a model of another kind (iterpo.models.tabular)
    embedding = get() if get is not None else None
    tied = (
        type(embedding) is torch.nn.Embedding
        and embedding.weight is weight
        and embedding.max_norm is None
        and not embedding.scale_grad_by_freq
    )
    return embedding if tied else None


def plain_head(model) -> bool:
    """Whether the output layer is a plain linear map (no bias, scaling or soft-capping), so chunking is exact."""
    _, head = _parts(model)
    config = model.config
    return (
        not _sharded(model)
        and isinstance(head, torch.nn.Linear)
        and head.bias is None
        and getattr(config, "final_logit_softcapping", None) is None
        and getattr(config, "logit_scale", None) in (None, 1.0)
    )


def token_logps(model, packed: Packed, layout: Layout = Layout()) -> torch.Tensor:
    """log pi(target | prefix) for every response token: (M,). Gradients flow when grad is enabled."""
    tensors_to(packed, model_device(model))  # built on the CPU: to where the model is
    inputs = dict(
        input_ids=packed.input_ids,
        position_ids=packed.position_ids,
        attention_mask=packed.attention_mask,
        use_cache=False,
    )  # a 4D mask is used as given
    context: AbstractContextManager[Any] = nullcontext()
    if packed.blocks is not None:  # padding-free: attention gathers each group's block out of the one row
        inputs.update(blocks=packed.blocks, real=packed.real.reshape(-1))
        context = packed_attention(model)
    with context:
        if layout.response_logits and plain_head(model):
            backbone, head = _parts(model)
            weight = head.weight  # (V, H)
            in_place = layout.grads_in_place and torch.is_grad_enabled() and weight.is_leaf and weight.requires_grad
            embedding = _plain_tied(backbone, weight) if in_place else None
            if embedding is not None:
                # the embedding's gradient as sparse rows, added in place to the dense one the output layer's
                # backward (which runs first) wrote into .grad
                del inputs["input_ids"]
                inputs["inputs_embeds"] = F.embedding(packed.input_ids, weight, embedding.padding_idx, sparse=True)
            hidden = backbone(**inputs).last_hidden_state  # (R, L, H)
            picked = hidden.flatten(0, 1).index_select(0, packed.predict_at)  # (M, H)
            return _ChunkedTokenLogps.apply(picked, weight, packed.targets, layout.chunk_rows, in_place)
        if layout.response_logits:  # an output layer with extras: the model applies it at the kept columns
            L = packed.input_ids.shape[1]
            keep = packed.predict_at.remainder(L).unique()  # (K,) sorted
            logits = model(**inputs, logits_to_keep=keep).logits  # (R, K, V)
            column = torch.searchsorted(keep, packed.predict_at.remainder(L))
            logits = logits[packed.predict_at.div(L, rounding_mode="floor"), column]  # (M, V)
        else:
            logits = model(**inputs).logits.flatten(0, 1).index_select(0, packed.predict_at)  # (M, V)
    return torch.log_softmax(logits.to(score_dtype(logits.dtype)), dim=-1).gather(1, packed.targets[:, None]).squeeze(1)


def sequence_logps(model, groups: Sequence[Group], layout: Layout = Layout(), pad_id: int = 0) -> torch.Tensor:
    """Sum of log pi(response token | prefix) per response, group by group: (n,) in the score dtype (float32, or
    float64 for a float64 model)."""
    packed = pack(groups, layout, pad_id)
    per_token = token_logps(model, packed, layout)  # (M,)
    return torch.zeros(packed.n, dtype=per_token.dtype, device=per_token.device).index_add(0, packed.owner, per_token)
