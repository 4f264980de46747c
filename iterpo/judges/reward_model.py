"""A reward model: any Hugging Face sequence-classification model in a local directory.

Each (prompt, response) is rendered with the reward model's own tokenizer and
chat template, scored in batches, and cached by the driver. The score is the
model's single logit (or, for a two-label classifier, the log-odds of label 1).

With ``mc_dropout: T`` the judge also reports its uncertainty (UPO, Wang et
al. 2024): dropout is applied T times to the pooled final hidden state before
the linear score head, giving T scores per response (``samples``); pairing
turns them into the BALD of each pair. One forward pass serves all T.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from iterpo.errors import DataError
from iterpo.judges.base import Judge, JudgeContext, check_model_dir_option, make_judge, register_judge
from iterpo.models.device import model_device, resolve_device
from iterpo.records import Judgement, Prompt, Rollout


def reward_text(tokenizer, messages: list[dict[str, str]], response: str) -> str:
    """What a reward model reads: the chat and the response as its last assistant turn, in the reward model's
    chat template (its lines joined, without one). Training (iterpo.training.reward_model) renders alike."""
    turns = messages + [{"role": "assistant", "content": response}]
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(turns, tokenize=False)
    return "\n".join(m["content"] for m in turns)


def encode_chats(tokenizer, model, chats: list[tuple[list[dict[str, str]], str]], max_length: int) -> dict:
    """(messages, response) chats rendered by reward_text as one padded batch on model's device, each keeping its
    last max_length tokens: what a reward or preference model reads (judges and training alike)."""
    enc = tokenizer(
        [reward_text(tokenizer, messages, response) for messages, response in chats],
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=max_length,
        add_special_tokens=not tokenizer.chat_template,
    )
    device = model_device(model)
    return {k: v.to(device) for k, v in enc.items()}


@register_judge("reward_model")
@dataclass
class RewardModel(Judge):
    """Score = a Hugging Face sequence-classification model's reward; optional MC-dropout uncertainty (UPO)."""

    name = "reward_model"
    path: str = ""
    """Local directory of a Hugging Face sequence-classification model and its tokenizer."""
    batch_size: int = 16
    max_length: int = 1024
    """Longer inputs keep their last max_length tokens (the response's end)."""
    mc_dropout: int = 0
    """Dropout passes for an uncertainty estimate (0: off; UPO used 30)."""
    dropout: float = 0.1
    """Dropout rate of those passes."""
    seed: int = 0
    """Seed of the dropout masks."""
    device: str = "auto"
    """Where the reward model runs (auto: a CUDA GPU, else MPS, else the CPU)."""
    volatile_options = ("batch_size", "device")

    def __post_init__(self):
        check_model_dir_option(self.path)
        if self.batch_size < 1 or self.max_length < 8 or self.mc_dropout < 0 or not 0 <= self.dropout < 1:
            raise ValueError("options need batch_size >= 1, max_length >= 8, mc_dropout >= 0 and 0 <= dropout < 1")
        self._model = None

    def check(self) -> None:
        from iterpo.models.loading import check_model_dir

        check_model_dir(Path(self.path), "judge reward_model: path")

    def _load(self):
        if self._model is None:
            model, tok = load_classifier(self.path, self.device, "judge reward_model")
            if model.config.num_labels not in (1, 2):
                raise DataError(
                    f"judge reward_model: {self.path} has {model.config.num_labels} labels; a reward model "
                    "has 1 (a score) or 2 (bad/good)"
                )
            self._head = next(
                (m for n in ("score", "classifier") if isinstance(m := getattr(model, n, None), torch.nn.Linear)), None
            )
            if self.mc_dropout and self._head is None:
                raise DataError(
                    f"judge reward_model: mc_dropout needs a linear head named 'score' or 'classifier'; "
                    f"{type(model).__name__} has neither"
                )
            self._tok, self._model = tok, model
        return self._model, self._tok

    def _reward(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., num_labels) -> (...,) the score: the logit, or the log-odds of label 1."""
        return logits[..., 0] if logits.shape[-1] == 1 else logits[..., 1] - logits[..., 0]

    @torch.no_grad()
    def judge(self, prompt: Prompt, rollouts: list[Rollout]) -> list[Judgement]:
        model, tok = self._load()
        gen = torch.Generator().manual_seed(self.seed)
        out = []
        for start in range(0, len(rollouts), self.batch_size):
            batch = rollouts[start : start + self.batch_size]
            enc = encode_chats(tok, model, [(prompt.messages, r.text) for r in batch], self.max_length)
            device = model_device(model)
            res = model(**enc, output_hidden_states=bool(self.mc_dropout))
            scores = self._reward(res.logits.float())  # (B,)
            passes: list[list[float]] = [[] for _ in batch]
            if self.mc_dropout:
                # the pooled state: the last real token's final hidden state (the head's input), (B, H)
                last = (
                    enc["attention_mask"].sum(1) - 1
                    if tok.padding_side == "right"
                    else torch.full((len(batch),), enc["input_ids"].shape[1] - 1, device=device)
                )
                pooled = res.hidden_states[-1][torch.arange(len(batch), device=device), last].float()
                # the masks are drawn on the CPU from the judge's own generator, so they do not depend on the device
                keep = (torch.rand((self.mc_dropout,) + pooled.shape, generator=gen) >= self.dropout).float()
                keep = keep.to(device)
                dropped = pooled * keep / (1 - self.dropout)  # (T, B, H)
                passes = self._reward(self._head(dropped.to(self._head.weight.dtype)).float()).T.tolist()  # (B, T)
            for r, s, ss in zip(batch, scores.tolist(), passes):
                uncertainty = statistics.pstdev(ss) if ss else None
                detail = f"reward {s:.3f}" + (f" ± {uncertainty:.3f}" if ss else "")
                if not math.isfinite(s):
                    out.append(Judgement(r.prompt_id, r.sample_idx, self.name, 0.0, "non-finite reward", failed=True))
                    continue
                out.append(
                    Judgement(r.prompt_id, r.sample_idx, self.name, s, detail, uncertainty=uncertainty, samples=ss)
                )
        return out


def load_classifier(path: str, device: str, what: str):
    """(model, tokenizer) of the sequence-classification model at path, in eval mode on device."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise DataError(f"{what}: {path} is not a sequence-classification model: {exc}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.truncation_side = "left"
    model.config.pad_token_id = tok.pad_token_id
    return model.to(resolve_device(device, f"{what}: device")).eval(), tok


def skew(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., 2k), (..., 2k) -> (...,): s(a, b) = sum_l a[2l] b[2l+1] - a[2l+1] b[2l]; s(a, b) = -s(b, a)."""
    return (a[..., 0::2] * b[..., 1::2] - a[..., 1::2] * b[..., 0::2]).sum(-1)


def skew_scores(v: torch.Tensor) -> torch.Tensor:
    """(K, 2k) unit embeddings -> (K, K) s[i, j] = skew(v_i, v_j) (s = -s.T)."""
    return skew(v[:, None, :], v[None, :, :])


def preference_verdicts(name: str, rollouts: list[Rollout], s: torch.Tensor, tau: float, unit: str) -> list:
    """Verdicts from a skew-symmetric score table s (K, K), as general preference models give them:

    beats[j] = sigmoid(s[i, j] / tau)   P(i beats j); 1/2 for itself
    win_rate = mean_j beats[j]          SPPO's estimate of P(i beats the sampling policy), self included
    score    = mean_j (s[i, j] - s[j, i])   GPO's preference score of i against the sampling policy
    """
    K = len(rollouts)
    p = torch.sigmoid(s / tau)
    out = []
    for i, r in enumerate(rollouts):
        beats = [0.5 if j == i else float(p[i, j]) for j in range(K)]
        score = float((s[i] - s[:, i]).mean())
        win_rate = sum(beats) / K
        detail = f"preference score {score:.3f} ({unit}), win rate {win_rate:.2f}"
        out.append(Judgement(r.prompt_id, r.sample_idx, name, score, detail, win_rate=win_rate, beats=beats))
    return out


@register_judge("general_preference")
@dataclass
class GeneralPreference(Judge):
    """A general preference model (GPM, Zhang et al. 2024) from a local directory: each response's embedding v
    (the sequence-classification model's 2k outputs, normalised) and y_i beats y_j with probability
    sigmoid(s(v_i, v_j) / tau) for the skew-symmetric s; verdicts as iterpo.judges.reward_model.preference_verdicts
    (score: GPO's preference score; win_rate and beats: SPPO's). One forward pass per response, no cache."""

    name = "general_preference"
    pointwise = False
    path: str = ""
    """A directory with a general preference model (iterpo train-rm --kind general-preference)."""
    tau: float | None = None
    """The temperature (default: the one the model was trained with, from its config; else 0.1)."""
    batch_size: int = 16
    max_length: int = 1024
    device: str = "auto"
    volatile_options = ("batch_size", "device")

    def __post_init__(self):
        check_model_dir_option(self.path)
        self._model = None

    def _load(self):
        if self._model is None:
            model, tok = load_classifier(self.path, self.device, "judge general_preference")
            dims = model.config.num_labels
            if dims < 2 or dims % 2:
                raise DataError(
                    f"judge general_preference: {self.path} has {dims} outputs; a general preference model has an "
                    "even number (2k) of them"
                )
            trained = getattr(model.config, "iterpo_preference_model", None) or {}
            self._tau = self.tau if self.tau is not None else float(trained.get("tau", 0.1))
            self._model, self._tok = model, tok
        return self._model, self._tok

    @torch.no_grad()
    def judge(self, prompt: Prompt, rollouts: list[Rollout]) -> list[Judgement]:
        model, tok = self._load()
        parts = []
        for start in range(0, len(rollouts), self.batch_size):
            batch = rollouts[start : start + self.batch_size]
            enc = encode_chats(tok, model, [(prompt.messages, r.text) for r in batch], self.max_length)
            parts.append(model(**enc).logits.float().cpu())
        v = torch.nn.functional.normalize(torch.cat(parts), dim=-1)  # (K, 2k)
        self.tally().add(len(rollouts) * (len(rollouts) - 1), [])
        return preference_verdicts(self.name, rollouts, skew_scores(v), self._tau, "general preference model")


def trained_model(context: JudgeContext, stage: str = "reward_model") -> tuple[str | None, int]:
    """(directory, round) of the model the run's stage of that kind trained in the latest round before the
    context's; (None, 0) when there is none yet."""
    for k in range(context.round - 1, 0, -1):
        path = context.trained(k, stage) if context.trained is not None else None
        if path is not None:
            return path, k
    return None, 0


def members_of(path: str) -> list[str]:
    """The member directories of an ensemble a reward_model stage saved (member-0, member-1, ...); [] for a
    single model."""
    found = sorted(Path(path).glob("member-*"), key=lambda p: int(p.name.split("-")[1]))
    return [str(p) for p in found if (p / "config.json").exists()]


def kind_of(path: str) -> str:
    """The kind a reward_model stage recorded in a model's config (bradley_terry without a record)."""
    import json

    members = members_of(path)
    config = json.loads((Path(members[0] if members else path) / "config.json").read_text())
    return (config.get("iterpo_preference_model") or {}).get("kind", "bradley_terry")


@dataclass
class TrainedInRun(Judge):
    """Base of the judges that use a model the run trained itself (a ``reward_model`` stage): in round r, the one
    trained in the latest round before r, of the kind the subclass reads; until one exists, the ``fallback``
    judge. Its cache key names which of them judged."""

    local = True  # its model is a file of the run's, found per round: never judged on workers
    stage: ClassVar[str] = "reward_model"  # the kind of stage that trains it
    trains: ClassVar[str] = ""  # the kind of model that stage must have trained
    loads: ClassVar[str] = ""  # the judge that reads such a model from its directory
    fallback: str = "exact_answer"
    """The pointwise judge of the rounds before the run has a model of its own (a registered name, default
    options)."""
    batch_size: int = 16
    device: str = "auto"
    """Where the model runs (auto: a CUDA GPU, else MPS, else the CPU)."""
    volatile_options = ("batch_size", "device")

    def __post_init__(self):
        self._fallback = make_judge(self.fallback, {})
        if not self._fallback.pointwise or isinstance(self._fallback, TrainedInRun):
            raise ValueError(f"fallback must be a pointwise judge of its own; {self.fallback} is not")
        self._current: Judge = self._fallback
        self._source = f"fallback {self.fallback}"

    def setup(self, context: JudgeContext) -> None:
        super().setup(context)
        self._current, self._source = self._fallback, f"fallback {self.fallback}"
        path, k = trained_model(context, self.stage)
        if path is not None:
            if kind_of(path) != self.trains:  # a reward_model stage's two kinds; the adversary trains one only
                other = "learned_preference" if self.trains == "bradley_terry" else "learned_reward"
                raise DataError(
                    f"judge {self.name}: round {k}'s reward_model stage trained a {kind_of(path)} model, not a "
                    f"{self.trains} one; use the judge {other}, or the stage's model_type: {self.trains}"
                )
            options = {"batch_size": self.batch_size, "device": self.device}
            members = members_of(path)
            if members:  # an ensemble: the members' mean, their spread the uncertainty
                judges = [{"name": self.loads, "path": p, **options} for p in members]
                self._current = make_judge("ensemble", {"judges": judges})
            else:
                self._current = make_judge(self.loads, {"path": path, **options})
            self._source = f"{self.trains.replace('_', ' ')} model of round {k}" + (
                f" ({len(members)} members)" if members else ""
            )
        self._current.setup(context)

    def identity(self) -> str:
        return f"{super().identity()}@{self._source}"


@register_judge("learned_reward")
@dataclass
class LearnedReward(TrainedInRun):
    """The reward model the run trained itself (a reward_model stage), scoring each response in later rounds;
    until one exists (round 1), the ``fallback`` judge."""

    name = "learned_reward"
    trains = "bradley_terry"
    loads = "reward_model"

    def judge(self, prompt: Prompt, rollouts: list[Rollout]) -> list[Judgement]:
        return [dataclasses.replace(j, judge=self.name) for j in self._current.judge(prompt, rollouts)]


@register_judge("adversarial")
@dataclass
class Adversarial(TrainedInRun):
    """The discriminator the run's adversary stage trained in the latest round before this one (EvoBot's
    co-trained detector): score = the probability it gives that the response is a reference text rather than
    the policy's, sigmoid(its logit), in [0, 1] like a verifier's; until one exists (round 1), the ``fallback``
    judge."""

    name = "adversarial"
    stage = "adversary"
    trains = "discriminator"
    loads = "reward_model"

    def judge(self, prompt: Prompt, rollouts: list[Rollout]) -> list[Judgement]:
        verdicts = self._current.judge(prompt, rollouts)
        if self._current is self._fallback:
            return [dataclasses.replace(j, judge=self.name) for j in verdicts]
        out = []
        for j in verdicts:
            p = 1.0 / (1.0 + math.exp(-j.score)) if not j.failed else 0.0
            out.append(dataclasses.replace(j, judge=self.name, score=p, detail=f"P(reference) {p:.3f}"))
        return out


@register_judge("learned_preference")
@dataclass
class LearnedPreference(TrainedInRun):
    """The general preference model the run trained itself (a reward_model stage with model_type:
    general_preference), comparing each prompt's responses in later rounds; until one exists, the ``fallback``
    judge's scores r as the Bradley-Terry special case, s(i, j) = r_i - r_j, so that every round's verdicts have
    the same form (GPO's preference score, SPPO's win rates)."""

    name = "learned_preference"
    pointwise = False
    trains = "general_preference"
    loads = "general_preference"

    def judge(self, prompt: Prompt, rollouts: list[Rollout]) -> list[Judgement]:
        if self._current is not self._fallback:
            return [dataclasses.replace(j, judge=self.name) for j in self._current.judge(prompt, rollouts)]
        # the fallback's rewards r as a preference table s(i, j) = r_i - r_j; a response it could not score stays
        # failed, and the others compare among themselves
        verdicts = self._fallback.judge(prompt, rollouts)
        ok = [i for i, j in enumerate(verdicts) if not j.failed]
        r = torch.tensor([verdicts[i].score for i in ok], dtype=torch.float64)
        scored = preference_verdicts(self.name, [rollouts[i] for i in ok], r[:, None] - r[None, :], 1.0, self._source)
        out = [dataclasses.replace(j, judge=self.name) for j in verdicts]
        for i, j in zip(ok, scored):
            beats = [math.nan] * len(rollouts)
            for m, b in zip(ok, j.beats):
                beats[m] = b
            out[i] = dataclasses.replace(j, beats=beats)
        return out
