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

import torch

from iterpo.errors import DataError
from iterpo.judges.base import Judge, JudgeContext, register_judge
from iterpo.models.device import model_device, resolve_device
from iterpo.records import Judgement, Prompt, Rollout


def reward_text(tokenizer, messages: list[dict[str, str]], response: str) -> str:
    """What a reward model reads: the chat and the response as its last assistant turn, in the reward model's
    chat template (its lines joined, without one). Training (iterpo.training.reward_model) renders alike."""
    turns = messages + [{"role": "assistant", "content": response}]
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(turns, tokenize=False)
    return "\n".join(m["content"] for m in turns)


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
        if not self.path or not Path(self.path).is_dir():
            raise ValueError(f"option path must be a local model directory, got {self.path!r}")
        if self.batch_size < 1 or self.max_length < 8 or self.mc_dropout < 0 or not 0 <= self.dropout < 1:
            raise ValueError("options need batch_size >= 1, max_length >= 8, mc_dropout >= 0 and 0 <= dropout < 1")
        self._model = None

    def check(self) -> None:
        from iterpo.models.loading import check_model_dir

        check_model_dir(Path(self.path), "judge reward_model: path")

    def _load(self):
        if self._model is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(self.path)
                model = AutoModelForSequenceClassification.from_pretrained(self.path, dtype=torch.float32)
                model = model.to(resolve_device(self.device, "judge reward_model: device"))
            except (OSError, ValueError) as exc:
                raise DataError(
                    f"judge reward_model: {self.path} is not a sequence-classification model: {exc}"
                ) from None
            if model.config.num_labels not in (1, 2):
                raise DataError(
                    f"judge reward_model: {self.path} has {model.config.num_labels} labels; a reward model "
                    "has 1 (a score) or 2 (bad/good)"
                )
            if tok.pad_token_id is None:
                tok.pad_token = tok.eos_token
            tok.truncation_side = "left"
            model.config.pad_token_id = tok.pad_token_id
            self._head = next(
                (m for n in ("score", "classifier") if isinstance(m := getattr(model, n, None), torch.nn.Linear)), None
            )
            if self.mc_dropout and self._head is None:
                raise DataError(
                    f"judge reward_model: mc_dropout needs a linear head named 'score' or 'classifier'; "
                    f"{type(model).__name__} has neither"
                )
            self._tok, self._model = tok, model.eval()
        return self._model, self._tok

    def text(self, prompt: Prompt, response: str) -> str:
        return reward_text(self._tok, prompt.messages, response)

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
            enc = tok(
                [self.text(prompt, r.text) for r in batch],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=not tok.chat_template,
            )
            device = model_device(model)
            enc = {k: v.to(device) for k, v in enc.items()}
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


@register_judge("learned_reward")
@dataclass
class LearnedReward(Judge):
    """The reward model the run trained itself (a ``reward_model`` stage), as the judge of later rounds: in round
    r, the one trained in the latest round before r; until one exists (round 1), the ``fallback`` judge."""

    name = "learned_reward"
    local = True  # its model is a file of the run's, found per round
    fallback: str = "exact_answer"
    """The judge of the rounds before the run has a reward model (a registered judge name, default options)."""
    batch_size: int = 16
    device: str = "auto"
    """Where the reward model runs (auto: a CUDA GPU, else MPS, else the CPU)."""
    volatile_options = ("batch_size", "device")

    def __post_init__(self):
        from iterpo.judges.base import make_judge

        if self.fallback == self.name:
            raise ValueError("fallback must be another judge")
        self._fallback = make_judge(self.fallback, {})
        self._current: Judge = self._fallback
        self._source = f"fallback {self.fallback}"

    def setup(self, context: JudgeContext) -> None:
        super().setup(context)
        self._current, self._source = self._fallback, f"fallback {self.fallback}"
        for k in range(context.round - 1, 0, -1):
            path = context.trained(k) if context.trained is not None else None
            if path is not None:
                self._current = RewardModel(path=path, batch_size=self.batch_size, device=self.device)
                self._source = f"reward model of round {k}"
                break
        self._current.setup(context)

    @property
    def source(self) -> str:
        """What judges now: the reward model of round k, or the fallback."""
        return self._source

    def identity(self) -> str:
        return f"{super().identity()}@{self._source}"

    def judge(self, prompt: Prompt, rollouts: list[Rollout]) -> list[Judgement]:
        return [dataclasses.replace(j, judge=self.name) for j in self._current.judge(prompt, rollouts)]
