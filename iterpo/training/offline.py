"""One round of offline preference training from a preference file (``iterpo train``), or SFT on its chosen
responses (``--loss sft``: a warm-up before ``iterpo run``; ``rejected`` may then be absent).

The file holds one pair per row in the layout TRL and most trainers read:
``prompt``, ``chosen``, ``rejected``, either plain strings or chat messages
(``prompt`` a list of messages, ``chosen``/``rejected`` the assistant's turn as a
list of one message), and optionally ``soft_label``, the probability that the
chosen response is preferred, and ``margin``, a target reward margin (``margin_dpo``). JSON lines, a JSON
list, or Parquet.

Tokenization follows TRL's rule, so the same file gives the same tokens in
both: chat messages go through the model's chat template (the prompt with the
generation prompt, then prompt + response); plain text gets the EOS token
appended to each response; the response is what follows the longest common
prefix of the tokenized prompt and prompt + response.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch

from iterpo.errors import UserInputError, reading
from iterpo.training.examples import GroupExample, PairExample


def read_preferences(path: str | Path, demonstrations: bool = False, what: str = "--preferences") -> list[dict]:
    """The rows of a preference file, checked: prompt, chosen and rejected present and of a known shape
    (``demonstrations``: for SFT on the chosen responses, rejected may be absent). ``what`` names the file's
    origin in errors (the option or config field)."""
    keys = ("prompt", "chosen") if demonstrations else ("prompt", "chosen", "rejected")
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{what}: {path} does not exist")
    with reading(what, path, UserInputError):
        if path.suffix == ".parquet":
            rows = pq.read_table(path).to_pylist()
        elif path.suffix == ".json":
            rows = json.loads(path.read_text(encoding="utf-8-sig"))
        else:
            rows = []
            for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise UserInputError(
                        f"{what}: {path} line {lineno} is not valid JSON: {exc.msg} (column {exc.colno})"
                    ) from None
    if not isinstance(rows, list) or not rows:
        raise UserInputError(f"{what}: {path} holds no preference rows")
    for i, row in enumerate(rows, 1):
        where = f"{what}: {path}, row {i}"
        if not isinstance(row, dict):
            raise UserInputError(f"{where}: expected an object with prompt, chosen and rejected")
        missing = [k for k in keys if k not in row]
        if missing:
            raise UserInputError(f"{where}: missing {', '.join(missing)} (has {', '.join(row) or 'nothing'})")
        chat = isinstance(row["prompt"], list)
        for key in keys:
            value = row[key]
            if chat and not (
                isinstance(value, list)
                and value
                and all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in value
                )
            ):
                raise UserInputError(
                    f"{where}: {key} must be a non-empty list of {{role, content}} messages, as the prompt is one"
                )
            if not chat and not (isinstance(value, str) and value):
                raise UserInputError(f"{where}: {key} must be a non-empty string (or every field a list of messages)")
        label = row.get("soft_label")
        if label is not None and not (isinstance(label, (int, float)) and 0 <= label <= 1):
            raise UserInputError(f"{where}: soft_label must be a number in [0, 1], got {label!r}")
        margin = row.get("margin")
        if margin is not None and not (isinstance(margin, (int, float)) and math.isfinite(margin)):
            raise UserInputError(f"{where}: margin must be a finite number, got {margin!r}")
    return rows


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def tokenize_pair(tokenizer, row: dict) -> PairExample:
    """Token ids of one row: (prompt, chosen, rejected), TRL's way (see the module docstring)."""
    prompt, (chosen, rejected) = _tokenize(tokenizer, row, ("chosen", "rejected"))
    label, margin = row.get("soft_label"), row.get("margin")
    return PairExample(
        prompt,
        chosen,
        rejected,
        soft_label=None if label is None else float(label),
        margin=None if margin is None else float(margin),
    )


def tokenize_demonstration(tokenizer, row: dict) -> GroupExample:
    """Token ids of one row's prompt and chosen response, to imitate (SFT)."""
    prompt, (chosen,) = _tokenize(tokenizer, row, ("chosen",))
    return GroupExample(prompt, [chosen], [1.0])


def _tokenize(tokenizer, row: dict, keys: tuple[str, ...]) -> tuple[list[int], list[list[int]]]:
    """(prompt ids, the ids of each response named by keys), TRL's way."""
    if isinstance(row["prompt"], list):

        def encode(messages, generation_prompt=False):
            return list(
                tokenizer.apply_chat_template(
                    messages, tokenize=True, return_dict=True, add_generation_prompt=generation_prompt
                )["input_ids"]
            )

        prompt = encode(row["prompt"], generation_prompt=True)
        full = [encode(row["prompt"] + row[k]) for k in keys]
    else:
        eos = tokenizer.eos_token

        def encode_text(text):
            return tokenizer(text)["input_ids"]

        prompt = encode_text(row["prompt"])
        full = [encode_text(row["prompt"] + (row[k] if row[k].endswith(eos) else row[k] + eos)) for k in keys]
    cut = min(_common_prefix(prompt, f) for f in full)
    responses = [f[cut:] for f in full]
    if cut == 0 or not all(responses):
        raise UserInputError(
            "--preferences: a row's prompt and response do not tokenize into a prompt followed by a response"
        )
    return prompt[:cut], responses


@dataclass
class OfflineResult:
    pairs: int
    reference_seconds: float
    train_seconds: float
    log: list[dict]

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / max(self.reference_seconds + self.train_seconds, 1e-9)


def check_loss(loss, examples: list, name: str) -> None:
    """A preference file has pairs, optionally soft labels (or, for SFT, the chosen responses to imitate); refuse
    losses that need more."""
    if loss.data_shape == "demonstrations":
        return
    if loss.data_shape != "pairs":
        raise UserInputError(f"loss {name} trains on {loss.data_shape} data; a preference file holds pairs")
    missing = {"win_rate": "win-rate estimates", "aux_samples": "extra samples per prompt", "scores": "judge scores"}
    for need, what in missing.items():
        if need in loss.needs:
            raise UserInputError(
                f"loss {name} needs {what}, which a preference file does not have; use it in `iterpo run`"
            )
    if "soft_label" in loss.needs and any(e.soft_label is None for e in examples):
        raise UserInputError(f"loss {name} needs a soft_label on every row of the preference file")
    if "margin" in loss.needs and any(e.margin is None for e in examples):
        raise UserInputError(f"loss {name} needs a margin (a number) on every row of the preference file")


@torch.no_grad()
def reference_logps(
    model, examples: list[PairExample], batch_size: int, pad_id: int, adapters_off: bool = False, progress=None
) -> list[tuple[float, float]]:
    """(chosen, rejected) log-probs of every pair under the reference, once; batch_size pairs a batch.

    progress, if given, advances by responses (two a pair).
    """
    from iterpo.models.logprobs import score_responses

    prompts = [e.prompt_ids for e in examples for _ in range(2)]
    responses = [r for e in examples for r in (e.chosen_ids, e.rejected_ids)]
    with model.disable_adapter() if adapters_off else nullcontext():
        values = score_responses(model, prompts, responses, 2 * batch_size, pad_id, progress)
    return [(values[2 * i], values[2 * i + 1]) for i in range(len(examples))]


def train_offline(model, examples: list, loss, config, pad_id: int, progress_bar=None, reference=None) -> OfflineResult:
    """Reference log-probs once (when the loss needs them), then the training loop over the examples (PairExample,
    or GroupExample for SFT)."""
    from iterpo.models.loading import is_lora
    from iterpo.training.trainer import train

    check_loss(loss, examples, config.loss.name)
    t0 = time.perf_counter()
    if loss.needs & {"reference", "previous"}:
        with progress_bar("reference log-probs", 2 * len(examples)) if progress_bar else nullcontext() as advance:
            ref = reference_logps(model, examples, max(config.train.batch_size, 16), pad_id, is_lora(model), advance)
        for e, r in zip(examples, ref):
            e.ref_logps = e.prev_logps = r  # one round: the policy the round starts from is the reference
    t1 = time.perf_counter()
    with progress_bar("training", len(examples) * config.train.epochs) if progress_bar else nullcontext() as advance:
        log = train(model, examples, loss, config.train, config.run.seed, pad_id, advance, reference)
    return OfflineResult(len(examples), t1 - t0, time.perf_counter() - t1, log)


def train_file(config, rows: list[dict], progress_bar=None) -> tuple:
    """One round of offline training on checked preference rows, set up as a run's first round.

    The starting policy (with LoRA adapters seeded as a run seeds them), a frozen reference for losses that
    compare per-token statistics against a live one, then train_offline. Returns (model, tokenizer, examples,
    OfflineResult).
    """
    import copy

    from iterpo.losses import get_loss
    from iterpo.losses.base import LIVE_NEEDS
    from iterpo.models.device import resolve_device
    from iterpo.models.loading import load_starting_policy, load_tokenizer, resolve_model_path
    from iterpo.sampling import derive_seed
    from iterpo.training.trainer import LiveReference

    path = resolve_model_path(config.model.path)
    tokenizer = load_tokenizer(path)
    loss = get_loss(config.loss.name, **config.loss.hyperparams())
    tokenize = tokenize_demonstration if loss.data_shape == "demonstrations" else tokenize_pair
    examples = [tokenize(tokenizer, row) for row in rows]
    check_loss(loss, examples, config.loss.name)  # before the model loads
    lora = config.model.lora
    model = load_starting_policy(
        path, config.model.dtype, lora, derive_seed(config.run.seed, "lora-init"), resolve_device(config.model.device)
    )
    reference = None
    if loss.needs & LIVE_NEEDS:  # per-token losses compare against a live reference: the starting policy
        reference = LiveReference(model, adapters_off=True) if lora else LiveReference(copy.deepcopy(model))
    torch.manual_seed(config.run.seed)
    result = train_offline(model, examples, loss, config, tokenizer.pad_token_id, progress_bar, reference)
    return model, tokenizer, examples, result
