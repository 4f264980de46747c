"""Process judges: the value of a partial response's last step, for the tree_search stage (``process_judge``).

A node of the search is a Rollout whose ``step_ends`` mark its steps; these
judges read the steps and score the last. Both read one next-token distribution
per response (no sampling), so a verdict depends on the response alone and is
cached like any pointwise judge's. The third kind of step value, from
Monte-Carlo completions judged by the task's verifier, needs no model: it is
tree_search's ``rollouts`` option.

- ``prm``: a process reward model in a local directory, a causal LM trained as
  Math-Shepherd's (Wang et al. 2024) is: each step is followed by a tag, and the
  model's next token after the last tag is a good or a bad label; score =
  P(good) / (P(good) + P(bad)). A sequence-classification model scoring the
  partial response works as a process judge through ``reward_model``.
- ``step_judge``: an LLM asked about the last step, by default the policy
  itself (Agent Q's self-critique, Putta et al. 2024): score = P(yes) /
  (P(yes) + P(no)) for the first token of its answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from iterpo.errors import DataError
from iterpo.judges.base import Judge, check_model_dir_option, register_judge
from iterpo.models.device import resolve_device
from iterpo.models.logprobs import next_token_odds
from iterpo.records import Judgement, Prompt, Rollout


def steps_of(tokenizer, rollout: Rollout) -> list[str]:
    """The policy's steps of a response as text (a tool's answers left out); one step when none are marked."""
    if not rollout.step_ends:
        return [rollout.text]
    mask = rollout.policy_mask or [True] * len(rollout.token_ids)
    out, start = [], 0
    for end in rollout.step_ends:
        ids = [t for t, m in zip(rollout.token_ids[start:end], mask[start:end]) if m]
        out.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
        start = end
    return out


def label_id(tokenizer, label: str, what: str) -> int:
    """The token id a one-token label is written with (its first token, as a reply starts)."""
    ids = tokenizer(label, add_special_tokens=False)["input_ids"]
    if not ids:
        raise DataError(f"{what}: {label!r} is no token of the tokenizer")
    return ids[0]


@register_judge("prm")
@dataclass
class ProcessRewardModel(Judge):
    """Score = a causal-LM process reward model's P(good) / (P(good) + P(bad)) after the last step's tag."""

    name = "prm"
    path: str = ""
    """Local directory of the process reward model (a causal LM) and its tokenizer."""
    step_tag: str = " ки"
    """Written after each step; the label is read after the last one (Math-Shepherd's tag)."""
    good: str = "+"
    """The label token of a good step."""
    bad: str = "-"
    """The label token of a bad step."""
    batch_size: int = 8
    max_length: int = 2048
    """Longer inputs keep their last max_length tokens."""
    device: str = "auto"
    volatile_options = ("batch_size", "device")

    def __post_init__(self):
        check_model_dir_option(self.path)
        if self.batch_size < 1 or self.max_length < 8 or not self.step_tag or self.good == self.bad:
            raise ValueError("options need batch_size >= 1, max_length >= 8, a step_tag and two different labels")
        self._model = None

    def check(self) -> None:
        from iterpo.models.loading import check_model_dir

        check_model_dir(Path(self.path), "judge prm: path")

    def _load(self):
        if self._model is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(self.path)
                model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32)
            except (OSError, ValueError) as exc:
                raise DataError(f"judge prm: {self.path} is not a causal language model: {exc}") from None
            self._ids = (label_id(tok, self.good, "judge prm: good"), label_id(tok, self.bad, "judge prm: bad"))
            if self._ids[0] == self._ids[1]:
                raise DataError(f"judge prm: labels {self.good!r} and {self.bad!r} start with the same token")
            self._tok = tok
            self._model = model.to(resolve_device(self.device, "judge prm: device")).eval()
        return self._model, self._tok

    def text(self, prompt: Prompt, steps: list[str]) -> str:
        """The question, then each step followed by the tag."""
        return prompt.text + "\n" + "\n".join(s + self.step_tag for s in steps)

    def judge(self, prompt: Prompt, rollouts: list[Rollout]) -> list[Judgement]:
        model, tok = self._load()
        seqs = [
            tok(self.text(prompt, steps_of(tok, r)), add_special_tokens=False)["input_ids"][-self.max_length :]
            for r in rollouts
        ]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        good, bad = self._ids
        scores = next_token_odds(model, seqs, pad, good, bad, self.batch_size)
        return [
            Judgement(r.prompt_id, r.sample_idx, self.name, p, f"P(good step) {p:.3f}")
            for r, p in zip(rollouts, scores)
        ]


STEP_QUESTION = """Here is a problem and the first steps of a solution.

Problem: {prompt}

Steps so far:
{steps}

Next step: {step}

Is the next step correct and useful for solving the problem? Answer Yes or No."""


@register_judge("step_judge")
@dataclass
class StepJudge(Judge):
    """The policy asked whether the last step is correct: score = P(Yes) / (P(Yes) + P(No)) (Agent Q's
    self-critique)."""

    name = "step_judge"
    uses_policy = True
    template: str = STEP_QUESTION
    """The question, with {prompt}, {steps} (the earlier steps, one per line) and {step} (the last)."""
    yes: str = "Yes"
    no: str = "No"
    batch_size: int = 16
    volatile_options = ("batch_size",)

    def __post_init__(self):
        if "{step}" not in self.template or self.batch_size < 1 or self.yes == self.no:
            raise ValueError("option template must contain {step}; batch_size >= 1; yes and no must differ")

    def judge(self, prompt: Prompt, rollouts: list[Rollout]) -> list[Judgement]:
        from iterpo.models.chat import encode_prompt

        ctx = self.context
        if ctx is None or ctx.policy is None:
            raise RuntimeError("step_judge needs the round's policy (JudgeContext.policy)")
        tok = ctx.tokenizer
        asks = []
        for r in rollouts:
            *before, last = steps_of(tok, r)
            question = self.template.format(prompt=prompt.text, steps="\n".join(before) or "(none)", step=last)
            asks.append(encode_prompt(tok, [{"role": "user", "content": question}], ctx.system_prompt))
        ids = (label_id(tok, self.yes, "judge step_judge: yes"), label_id(tok, self.no, "judge step_judge: no"))
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        scores = next_token_odds(ctx.policy(), asks, pad, ids[0], ids[1], self.batch_size)
        return [Judgement(r.prompt_id, r.sample_idx, self.name, p, f"P(yes) {p:.3f}") for r, p in zip(rollouts, scores)]
