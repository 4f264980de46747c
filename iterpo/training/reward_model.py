"""Preference models trained by iterpo (the ``reward_model`` stage and ``iterpo train-rm``).

A sequence-classification head on a backbone reads a prompt and a response, rendered as the ``reward_model``
judge renders them. Two kinds:

- Bradley-Terry (``bradley_terry``): one output, a reward r; the loss of a pair is
  -log sigmoid(r(x, y_w) - r(x, y_l)) (Ouyang et al. 2022, eq. 1). Loaded by the ``reward_model`` judge.
- General preference (``general_preference``, GPM; Zhang et al. 2024, "General Preference Modeling with
  Preference Representations for Aligning Language Models"): 2k outputs, an embedding v normalised to unit
  length; y beats y' with probability sigmoid(s(y, y') / tau), s(y, y') = sum_l v[2l] v'[2l+1] - v[2l+1] v'[2l],
  a skew-symmetric form (s(y, y') = -s(y', y)) that can express preferences no single reward can (cycles).
  The loss is -log sigmoid(s(y_w, y_l) / tau). Loaded by the ``general_preference`` judge.

A share of the prompts is held out, all of a prompt's pairs on one side, and the model's accuracy on their
pairs is reported. The result is a directory transformers loads, its kind recorded in its config.

A third kind is not a preference model: the ``adversary`` stage's discriminator (``train_discriminator``), one
output, the log-odds that a response is one of the reference texts rather than the policy's, trained with the
binary cross-entropy of a classifier on labelled single responses. Loaded by the ``reward_model`` judge too:
its score is that log-odds.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F

from iterpo.judges.reward_model import encode_chats, skew
from iterpo.models.loading import own_memory
from iterpo.records import by_prompt
from iterpo.sampling import derive_seed

P = TypeVar("P", "RewardPair", "LabelledText")


@dataclass
class RewardPair:
    prompt_id: str  # a prompt's pairs stay on one side of the held-out split
    messages: list[dict[str, str]]  # the chat the two responses answer
    chosen: str  # response texts, as judges read them
    rejected: str


@dataclass
class LabelledText:
    prompt_id: str  # a prompt's texts stay on one side of the held-out split
    messages: list[dict[str, str]]  # the chat the response answers
    text: str  # the response, as judges read it
    reference: bool  # True: one of the reference texts; False: the policy's


KINDS = ("bradley_terry", "general_preference")


@dataclass
class RewardTraining:
    """How a preference model is trained."""

    kind: str = "bradley_terry"  # or "general_preference" (GPM)
    dims: int = 4  # general_preference: the embedding's size 2k (even)
    tau: float = 0.1  # general_preference: the temperature of sigmoid(s / tau)
    epochs: int = 2
    lr: float = 1.0e-5
    batch_size: int = 8  # pairs per optimizer step
    heldout: float = 0.2  # share of prompts whose pairs are held out for the accuracy
    max_length: int = 512  # longer texts keep their last tokens
    seed: int = 0  # the head's initialisation, the order of the pairs and the held-out split

    def check(self) -> None:
        if self.epochs < 1 or self.lr <= 0 or self.batch_size < 1 or self.max_length < 8:
            raise ValueError("reward model training needs epochs >= 1, lr > 0, batch_size >= 1 and max_length >= 8")
        if not 0 <= self.heldout < 1:
            raise ValueError(f"heldout must be a share in [0, 1), got {self.heldout}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "general_preference" and (self.dims < 2 or self.dims % 2 or self.tau <= 0):
            raise ValueError(
                f"a general preference model needs an even dims >= 2 and tau > 0, got {self.dims}, {self.tau}"
            )

    @property
    def outputs(self) -> int:
        return 1 if self.kind == "bradley_terry" else self.dims


@dataclass
class RewardReport:
    pairs: int
    train_pairs: int
    heldout_pairs: int
    heldout_accuracy: float | None  # share of held-out pairs the reward ranks as labelled
    train_accuracy: float | None
    heldout_loss: float | None
    losses: list[float] = field(default_factory=list)  # (steps,) the training loss of each step
    seconds: float = 0.0


def pairs_of_rows(rows: list[dict]) -> list[RewardPair]:
    """A preference file's rows (iterpo.training.offline.read_preferences: prompt as text or chat messages,
    chosen and rejected as text or messages) as reward pairs; rows with the same prompt are one prompt."""
    out = []
    for row in rows:
        key, messages = row_chat(row)
        out.append(RewardPair(key, messages, reply_text(row["chosen"]), reply_text(row["rejected"])))
    return out


def row_chat(row: dict) -> tuple[str, list[dict[str, str]]]:
    """(prompt id, chat messages) of a preference or demonstration file's row: its prompt as text or messages,
    rows with the same prompt sharing an id."""
    prompt = row["prompt"]
    messages = [dict(m) for m in prompt] if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    return json.dumps(messages, sort_keys=True), messages


def reply_text(value) -> str:
    """A row's response: the text, or the content of its (last) assistant message."""
    return value[-1]["content"] if isinstance(value, list) else value


def split(pairs: list[P], heldout: float, seed: int) -> tuple[list[P], list[P]]:
    """(train, held out): each prompt's pairs (or texts) go to the held-out side with probability ``heldout``,
    decided by a hash of (seed, prompt id), so the split does not depend on the order or number of pairs."""
    out: tuple[list[P], list[P]] = ([], [])
    for p in pairs:
        held = derive_seed(seed, "reward-heldout", p.prompt_id) % 10_000 < heldout * 10_000
        out[int(held)].append(p)
    return out


def split_to_train(items: list[P], opts: RewardTraining, what: str) -> tuple[list[P], list[P]]:
    """split(), refusing a split that leaves nothing to train on."""
    train, heldout = split(items, opts.heldout, opts.seed)
    if not train:
        raise ValueError(f"no training {what}: all {len(items)} fell in the held-out share ({opts.heldout})")
    return train, heldout


def fit(
    model, items: list[P], opts: RewardTraining, batch_loss: Callable, order: str, progress: Callable | None
) -> list[float]:
    """AdamW on batch_loss over items, opts.batch_size at a time for opts.epochs, each epoch in an order drawn
    from (opts.seed, order, epoch); gradients clipped to norm 1. Returns each step's loss; progress(1) after
    each step."""
    own_memory([p for p in model.parameters() if p.requires_grad])  # before the first step writes them
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr)
    losses = []
    for epoch in range(opts.epochs):
        shuffled = list(items)
        random.Random(derive_seed(opts.seed, order, epoch)).shuffle(shuffled)
        model.train()
        for at in range(0, len(shuffled), opts.batch_size):
            loss = batch_loss(shuffled[at : at + opts.batch_size])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(1)
    return losses


def margins(opts: RewardTraining, w: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """(B, D), (B, D) head outputs of chosen and rejected -> (B,) the logit of P(y_w beats y_l)."""
    if opts.kind == "bradley_terry":
        return w[:, 0] - lo[:, 0]
    return skew(F.normalize(w, dim=-1), F.normalize(lo, dim=-1)) / opts.tau


def load_backbone(path: str, seed: int, opts: RewardTraining | None = None):
    """(model, tokenizer): a sequence-classification model on the backbone at path, with opts' outputs (1 for a
    reward model); its new head is initialised from seed, and its kind recorded in its config."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.truncation_side = "left"
    opts = opts or RewardTraining()
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=opts.outputs, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    model.config.iterpo_preference_model = {"kind": opts.kind, "tau": opts.tau}
    return model, tok


def outputs(model, tok, pairs: list[RewardPair], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected), each (B, D): the head's outputs for the pairs' two responses, in one forward pass."""
    chats = [(p.messages, p.chosen) for p in pairs] + [(p.messages, p.rejected) for p in pairs]
    r = model(**encode_chats(tok, model, chats, max_length)).logits.float()  # (2B, D)
    return r[: len(pairs)], r[len(pairs) :]


@torch.no_grad()
def evaluate(model, tok, pairs: list[RewardPair], opts: RewardTraining) -> tuple[float | None, float | None]:
    """(accuracy, mean loss) of the model on pairs; (None, None) without pairs."""
    if not pairs:
        return None, None
    model.eval()
    right, loss = 0.0, 0.0
    for start in range(0, len(pairs), opts.batch_size):
        m = margins(opts, *outputs(model, tok, pairs[start : start + opts.batch_size], opts.max_length))
        right += float((m > 0).sum())
        loss += float(-F.logsigmoid(m).sum())
    return right / len(pairs), loss / len(pairs)


def train_preference_model(
    backbone: str, pairs: list[RewardPair], opts: RewardTraining, device: str, progress: Callable | None = None
):
    """(model, tokenizer, RewardReport): a preference model of opts.kind trained on pairs' training split.
    progress(n) after each step (of epochs x ceil(train pairs / batch_size))."""
    opts.check()
    start = time.perf_counter()
    train, heldout = split_to_train(pairs, opts, "pairs")
    model, tok = load_backbone(backbone, opts.seed, opts)
    model.to(device)

    def batch_loss(batch: list[RewardPair]) -> torch.Tensor:
        return -F.logsigmoid(margins(opts, *outputs(model, tok, batch, opts.max_length))).mean()  # -log P(w beats l)

    losses = fit(model, train, opts, batch_loss, "reward-order", progress)
    heldout_accuracy, heldout_loss = evaluate(model, tok, heldout, opts)
    train_accuracy, _ = evaluate(model, tok, train, opts)
    report = RewardReport(
        len(pairs),
        len(train),
        len(heldout),
        heldout_accuracy,
        train_accuracy,
        heldout_loss,
        losses,
        time.perf_counter() - start,
    )
    return model.eval(), tok, report


def train_ensemble(
    backbone: str,
    pairs: list[RewardPair],
    opts: RewardTraining,
    members: int,
    device: str,
    progress: Callable | None = None,
):
    """([(model, tokenizer)] * members, RewardReport): Bradley-Terry models each trained on a bootstrap resample
    of the training split's prompts (drawn with replacement, a prompt's pairs together), for the preference
    strength of "Secrets of RLHF in Large Language Models Part II: Reward Modeling" (Wang et al. 2024). The
    report's accuracies are the ensemble's: its mean reward ranks the pair."""
    opts.check()
    start = time.perf_counter()
    train, heldout = split_to_train(pairs, opts, "pairs")
    of_prompt = by_prompt(train)
    prompts = list(of_prompt)
    built, losses = [], []
    for m in range(members):
        rng = random.Random(derive_seed(opts.seed, "reward-bootstrap", m))
        resample = [p for pid in rng.choices(prompts, k=len(prompts)) for p in of_prompt[pid]]
        member = dataclasses.replace(opts, heldout=0.0, seed=derive_seed(opts.seed, "reward-member", m) % 2**31)
        model, tok, report = train_preference_model(backbone, resample, member, device, progress)
        built.append((model, tok))
        losses += report.losses
    heldout_accuracy, heldout_loss = ensemble_accuracy(built, heldout, opts)
    train_accuracy, _ = ensemble_accuracy(built, train, opts)
    elapsed = time.perf_counter() - start
    report = RewardReport(
        len(pairs), len(train), len(heldout), heldout_accuracy, train_accuracy, heldout_loss, losses, elapsed
    )
    return built, report


@torch.no_grad()
def member_margins(built: list, pairs: list[RewardPair], opts: RewardTraining) -> torch.Tensor:
    """(M, B): each member's reward difference r(y_w) - r(y_l) on each pair."""
    rows = []
    for model, tok in built:
        model.eval()
        parts = [
            margins(opts, *outputs(model, tok, pairs[at : at + opts.batch_size], opts.max_length))
            for at in range(0, len(pairs), opts.batch_size)
        ]
        rows.append(torch.cat(parts) if parts else torch.zeros(0))
    return torch.stack(rows)


def ensemble_accuracy(built: list, pairs: list[RewardPair], opts: RewardTraining):
    """(accuracy, mean loss) of the members' mean reward difference on pairs; (None, None) without pairs."""
    if not pairs:
        return None, None
    mean = member_margins(built, pairs, opts).mean(0)  # (B,)
    return float((mean > 0).float().mean()), float(-F.logsigmoid(mean).mean())


def steps(pairs: list[P], opts: RewardTraining) -> int:
    """How many optimizer steps train_preference_model takes on pairs (for a progress bar)."""
    train, _ = split(pairs, opts.heldout, opts.seed)
    return opts.epochs * -(-len(train) // opts.batch_size)


@torch.no_grad()
def text_logits(model, tok, texts: list[LabelledText], batch_size: int, max_length: int) -> torch.Tensor:
    """(N,) the discriminator's log-odds that each text is a reference text."""
    model.eval()
    parts = [
        model(**encode_chats(tok, model, [(t.messages, t.text) for t in texts[at : at + batch_size]], max_length))
        .logits.float()[:, 0]
        .cpu()
        for at in range(0, len(texts), batch_size)
    ]
    return torch.cat(parts) if parts else torch.zeros(0)


def _labels(texts: list[LabelledText]) -> torch.Tensor:
    return torch.tensor([float(t.reference) for t in texts])


def train_discriminator(
    backbone: str, texts: list[LabelledText], opts: RewardTraining, device: str, progress: Callable | None = None
):
    """(model, tokenizer, report dict): a one-output classifier on the backbone trained to tell the reference
    texts from the policy's, loss = binary cross-entropy of sigmoid(logit) against the label, on the texts of
    the training split's prompts; the held-out prompts' texts measure its accuracy (logit > 0 <=> reference).
    progress(n) after each step."""
    opts.check()
    start = time.perf_counter()
    train, heldout = split_to_train(texts, opts, "texts")
    model, tok = load_backbone(backbone, opts.seed, dataclasses.replace(opts, kind="bradley_terry"))
    model.config.iterpo_preference_model = {"kind": "discriminator"}
    model.to(device)

    def batch_loss(batch: list[LabelledText]) -> torch.Tensor:
        logits = model(**encode_chats(tok, model, [(t.messages, t.text) for t in batch], opts.max_length)).logits
        return F.binary_cross_entropy_with_logits(logits.float()[:, 0], _labels(batch).to(logits.device))

    losses = fit(model, train, opts, batch_loss, "discriminator-order", progress)

    def accuracy(part: list[LabelledText]) -> tuple[float | None, float | None]:
        if not part:
            return None, None
        z, y = text_logits(model, tok, part, opts.batch_size, opts.max_length), _labels(part)
        return float(((z > 0).float() == y).float().mean()), float(F.binary_cross_entropy_with_logits(z, y))

    (heldout_accuracy, heldout_loss), (train_accuracy, _) = accuracy(heldout), accuracy(train)
    report = {
        "texts": len(texts),
        "reference_texts": sum(t.reference for t in texts),
        "train_texts": len(train),
        "heldout_texts": len(heldout),
        "heldout_accuracy": heldout_accuracy,
        "train_accuracy": train_accuracy,
        "heldout_loss": heldout_loss,
        "losses": losses,
        "seconds": time.perf_counter() - start,
    }
    return model.eval(), tok, report


def save_reward_model(model, tok, path: Path) -> None:
    """A directory transformers loads (and the reward_model or general_preference judge, by its kind)."""
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
