"""The run config: one typed, validated section per stage.

Every field is documented once, here. A YAML file gives any subset of fields;
``--set section.field=value`` overrides apply on top; the fully resolved config
is saved with the run as ``config.yaml``. Each section checks its own fields;
the checks that span sections or need a component (a loss's hyperparameters,
a judge's options, a strategy's data shape) are iterpo.plan's. This module
imports no iterpo component.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from iterpo.errors import ConfigError, reading


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ClusterSection(Section):
    engine: Literal["ray"] = "ray"
    """What runs the workers: Ray (pip install 'iterpo[ray]')."""
    address: str = "local"
    """'local': a Ray instance started for this run on this machine; 'auto': the cluster this machine joined with
    `ray start`; or a cluster's address (HOST:PORT, ray://HOST:PORT). The run directory must be on storage every
    node sees."""
    workers: int = Field(default=2, ge=1)
    """Worker actors; each holds a replica of the policy (and of the judge when it is a model)."""
    cpus_per_worker: float = Field(default=1, gt=0)
    gpus_per_worker: float = Field(default=0, ge=0)
    """GPUs per worker (1: one vLLM engine per GPU)."""
    threads: int | None = Field(default=None, ge=1)
    """torch CPU threads in each worker (default: run.threads). Rollouts are byte-identical to one process's when
    the workers use the thread count and hardware of the run's process."""


class TrackingSection(Section):
    tensorboard: bool = False
    """Log each round's figures and each training step's to TensorBoard event files in RUN_DIR/tensorboard
    (pip install 'iterpo[tensorboard]'; view with tensorboard --logdir RUN_DIR/tensorboard)."""
    mlflow: bool = False
    """Log them to MLflow, one MLflow run per iterpo run with the config as its parameters
    (pip install 'iterpo[mlflow]')."""
    mlflow_uri: str | None = None
    """MLflow tracking URI (a server's http://HOST:PORT, sqlite:///PATH, ...). None: MLFLOW_TRACKING_URI when set,
    else sqlite:///RUN_DIR/mlflow.db (view with mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow.db)."""
    experiment: str = "iterpo"
    """MLflow experiment the run is logged under (created when missing)."""


class RunSection(Section):
    dir: str | None = None
    """Run directory. Default: runs/<config name> ('runs/default' for the built-in default)."""
    seed: int = 0
    """Run seed; every sample's seed derives from (seed, round, prompt id, sample index)."""
    rounds: int = Field(default=3, ge=1)
    """Number of sample -> judge -> pair -> train rounds."""
    save_every: int = Field(default=1, ge=1)
    """Save the policy every k rounds (and always after the last round)."""
    threads: int | None = Field(default=None, ge=1)
    """torch CPU threads; None leaves torch's default."""
    cluster: ClusterSection | None = None
    """Send the shards of the sample, judge and reference stages to workers on a cluster (see ClusterSection);
    null: everything runs in this process. It does not change results, so a run can resume with another one."""
    tracking: TrackingSection = TrackingSection()
    """Copy the figures to TensorBoard and/or MLflow (see TrackingSection); off by default. It does not change
    results, so a run can resume with tracking turned on or off."""


class LoraSection(Section):
    r: int = Field(default=16, ge=1)
    """LoRA rank."""
    alpha: float = Field(default=32.0, gt=0)
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    """Module names that get adapters."""
    save_merged: bool = False
    """Also save a merged full copy of the model with each checkpoint."""


class ModelSection(Section):
    path: str = "smollm2-135m-instruct"
    """The built-in model name, a local Hugging Face directory, a .gguf file, or a hub id."""
    dtype: Literal["float32", "bfloat16", "float64"] = "float32"
    """Parameter dtype for training and sampling (float64: exact checks on small models such as the tabular
    policy of iterpo.models.tabular; log-probs are then computed in float64 too)."""
    device: str = "auto"
    """Where the policy, its reference and model judges run: auto (a CUDA GPU, else Apple's MPS, else the CPU),
    cpu, cuda, cuda:N or mps. Training processes (train.processes) take one GPU each."""
    system_prompt: str | None = None
    """Replaces the chat template's default system prompt when set."""
    lora: LoraSection | None = None
    """Train LoRA adapters instead of all weights (reference = adapters disabled)."""


class TaskSection(Section):
    name: str = "arithmetic"
    """Built-in task ('arithmetic', 'word_problems', 'code', 'constraints', 'synthetic_users', 'big_arithmetic'
    and 'town_facts', which need a tool: see the environment section), or 'file' for prompts read from
    train_file / eval_file. Each task names its default judge."""
    train_size: int = Field(default=64, ge=1)
    """Number of training prompts (for 'file': at most this many, in file order)."""
    eval_size: int = Field(default=100, ge=1)
    """Number of held-out prompts."""
    digits: int = Field(default=2, ge=1, le=6)
    """arithmetic: digits per operand."""
    operations: list[Literal["+", "-", "*"]] = ["+"]
    """arithmetic: operations to draw from."""
    tuning: bool = False
    """arithmetic: evaluate on the tuning set instead of the held-out set: a second fixed set of eval_size
    questions, disjoint from the held-out set (training sets exclude both), for choosing settings without
    looking at the held-out set."""
    shots: int = Field(default=2, ge=0, le=8)
    """synthetic_users: the user's labelled preferences shown before each request (FSPO's few-shot examples)."""
    train_file: str | None = None
    """file: JSONL or parquet with 'prompt' or 'messages', optional 'answer', and optional 'user' and
    'preferences' (that user's labelled preferences, [{prompt, chosen, rejected}], shown before the request)."""
    eval_file: str | None = None
    """file: held-out prompts in the same format (optional)."""

    @model_validator(mode="after")
    def _file_task_needs_file(self):
        if self.name == "file" and not self.train_file:
            raise ValueError("task 'file' needs task.train_file")
        if not self.operations:
            raise ValueError("task.operations must name at least one of +, -, *")
        return self


class SamplingSection(Section):
    samples_per_prompt: int = Field(default=8, ge=1)
    """K responses sampled per training prompt each round."""
    temperature: float = Field(default=0.8, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_new_tokens: int = Field(default=32, ge=1)
    batch_size: int = Field(default=256, ge=1)
    """Sequences generated together (samples do not depend on it: each depends on its seed alone)."""
    shard_size: int = Field(default=32, ge=1)
    """Prompts per shard; a finished shard survives a crash. A shard's samples decode in batches of batch_size
    at most, so shard_size x samples_per_prompt >= batch_size keeps the batches full."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """The weights' dtype while generating (a copy of the policy is cast to it; training keeps model.dtype):
    auto = bfloat16 for a float32 policy where the device multiplies bfloat16 natively (CUDA GPUs of Ampere
    and later, CPUs with AVX512-BF16 or AMX), where it runs 1.5-3x faster; else the policy's own dtype."""
    prompts_per_round: int | None = Field(default=None, ge=1)
    """Each round samples this many training prompts, the next ones in a fixed order (cycling through them), for
    online rounds of a few prompts and one optimizer step. null: every training prompt every round."""
    backend: Literal["auto", "transformers", "vllm"] = "auto"
    """Generation engine: auto = vLLM where vLLM and a CUDA GPU are present, else transformers."""
    gpu_memory_utilization: float = Field(default=0.5, gt=0, le=1)
    """vLLM: the share of GPU memory its engine may take while sampling (it is closed before training)."""
    exhaustive: bool = False
    """Instead of samples_per_prompt drawn samples, every response of nonzero probability under the sampling
    distribution (temperature, top_p) within max_new_tokens, each weighted by its probability, so judges'
    win rates and the losses take exact expectations over the policy. For small response spaces (the tabular
    policy, iterpo.models.tabular; at most 4096 responses a prompt); transformers, in this process."""


class ReasoningSection(Section):
    """Responses that reason before they answer: "<think> ... </think> the answer"."""

    end: str = Field(default="</think>", min_length=1)
    """The marker that ends the reasoning. Judges, pairing and the held-out evaluation read the answer after it;
    a response without it is all answer, unless it opened ``start`` and never closed it (then its answer is
    empty: the response ran out while reasoning)."""
    start: str | None = "<think>"
    """The marker that opens the reasoning (null: none; the reasoning is whatever comes before ``end``)."""
    train: bool = True
    """Train on the reasoning tokens too; false: the reasoning is context, read but never trained on, in the loss
    and in the reference's log-probs alike (PRefLexOR's masked thinking)."""


class EnvironmentSection(Section):
    model_config = ConfigDict(extra="allow", validate_assignment=True)
    name: str | None = None
    """Registered environment (`iterpo environments` lists them: calculator, python, retrieval): every sampled
    and evaluated response becomes a trajectory, in which the policy may call the tool and read its answer
    before it answers; the other keys of this section are the tool's options. null: one flat generation."""
    max_turns: int = Field(default=4, ge=1)
    """Policy turns per episode, the last of them the final answer: a call in the last turn ends the episode
    unanswered (finish reason 'turns')."""
    max_tokens: int = Field(default=256, ge=1)
    """Token budget of an episode, the policy's and the tool's tokens together (finish reason 'length' when it
    is spent). Each turn writes at most sampling.max_new_tokens (eval.max_new_tokens when evaluating)."""
    max_observation_tokens: int = Field(default=128, ge=1)
    """A tool's answer is cut to this many tokens."""

    def options(self) -> dict:
        return dict(self.model_extra or {})


class JudgeSection(Section):
    model_config = ConfigDict(extra="allow", validate_assignment=True)
    name: str | None = None
    """Registered judge (`iterpo judges` lists them); the other keys of this section are its options.
    Default: the task's own judge ('exact_answer' for arithmetic)."""
    max_failed_share: float = Field(default=0.1, ge=0, le=1)
    """Largest share of failed verdicts (responses; for pairwise judges, comparisons) a judging stage accepts.
    Above it the run stops before pairing, with the judge stage left unfinished, so that a resume asks
    again only what failed. Isolated failures below it are recorded and left out of pairing."""

    def options(self) -> dict:
        return dict(self.model_extra or {})


class PairingSection(Section):
    model_config = ConfigDict(extra="allow", validate_assignment=True)
    strategy: str | None = None
    """Registered pairing strategy. Default: the one for the loss's data shape
    ('correct_vs_incorrect' for pairs, 'labelled' for KTO, 'ranked' for PRO/TPO)."""
    pairs_per_prompt: int = Field(default=1, ge=1)
    """At most this many pairs per prompt (for 'labelled': responses of each label)."""
    threshold: float = 1.0
    """A response scoring at least this is good (chosen / desirable)."""
    group_size: int = Field(default=4, ge=2)
    """ranked: responses per ranked group."""
    length_penalty: float = Field(default=0.0, ge=0)
    """Subtracted from each score per response token, against length exploitation (0: off)."""
    prefer_shorter: bool = False
    """Among equally scored responses choose the shortest as chosen and the longest as rejected."""
    rationale: bool = False
    """Give each pair the judge's written reason for it as a side target (judges that explain: self_judge,
    pairwise_http), for the rationale_dpo loss; pairs whose judge gave none keep no rationale (counted)."""
    degrees: int = Field(default=0, ge=0)
    """Give each pair side targets of the chosen response with k = 0 .. degrees key sentences removed, to
    predict k (Self-supervised Preference Optimization), for the ssl_dpo loss; 0: none."""

    def options(self) -> dict:
        """The strategy's own options: the keys of this section not listed above."""
        return dict(self.model_extra or {})


class ReferenceSection(Section):
    policy: Literal["initial", "previous", "ema", "extrapolated"] = "previous"
    """'initial': the starting model, fixed; 'previous': the policy each round starts from; 'ema': an
    exponential moving average of the policy's weights over the rounds so far (ema_decay); 'extrapolated': APO's
    Nesterov-style reference, log pi_ref(y) = (1 + alpha) log pi_t(y) - alpha log pi_{t-1}(y) per response."""
    ema_decay: float = Field(default=0.5, ge=0, lt=1)
    """ema: after round t the average becomes ema_decay x average + (1 - ema_decay) x policy (round 0: the
    starting model); round t + 1 is trained against it."""
    alpha: float = Field(default=0.5, ge=0, lt=1)
    """extrapolated: the extrapolation weight (0: the previous policy)."""

    def options(self) -> list[str]:
        """The fields this policy uses: the others are left out of the config as run."""
        return {"ema": ["ema_decay"], "extrapolated": ["alpha"]}.get(self.policy, [])


class LossSection(Section):
    model_config = ConfigDict(extra="allow", validate_assignment=True)
    name: str = "dpo"
    """Registered loss; the other keys of this section are its hyperparameters."""

    def hyperparams(self) -> dict:
        return dict(self.model_extra or {})


class TrainSection(Section):
    lr: float = Field(default=5e-6, gt=0)
    optimizer: Literal["adamw", "sgd", "lbfgs"] = "adamw"
    """adamw: AdamW (fused where it can be); sgd: plain gradient descent, parameters -= lr x gradient (no
    momentum), whose steps the closed-form updates of iterpo.games are written in; lbfgs: each optimizer step
    L-BFGS with a strong-Wolfe line search until the gradient vanishes (up to 200 evaluations of the step's
    whole batch; no clipping, one process), for small models trained to the loss's minimiser, as the closed
    forms of iterative DPO and APO assume."""
    first_moment: Literal["float32", "bfloat16"] = "bfloat16"
    """adamw: the dtype of its first moment (the gradients' running mean) for float32 weights. bfloat16
    (default) takes 2 of the optimizer's 8 bytes per parameter off (257 MB for a 135M model) at about the same
    speed, each step's arithmetic still float32 and the second moment float32 (iterpo.training.optim); on a
    device other than the CPU or a CUDA GPU the moment stays float32. float32: exactly torch's AdamW (the
    default before 2026-12-01: runs made before resume with train.first_moment=float32)."""
    epochs: int = Field(default=2, ge=1)
    batch_size: int = Field(default=4, ge=1)
    """Pairs per optimizer micro-batch."""
    grad_accum: int = Field(default=1, ge=1)
    """Micro-batches per optimizer step."""
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(default=0, ge=0)
    """Optimizer steps over which the learning rate rises linearly to lr at the start of each round's training."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """The learning rate after warmup, over each round's training: 'constant' stays at lr; 'linear' and 'cosine'
    fall from lr towards 0 at the round's last step (as transformers' schedulers of those names)."""
    round_lr_decay: float = Field(default=1.0, gt=0, le=1)
    """Round r trains at lr x round_lr_decay^(r - 1): below 1, each round takes smaller steps than the one before
    (1: every round at lr). It keeps decaying with every round run; the warm-up and `iterpo train` train at lr."""
    max_tokens_per_pass: int | None = Field(default=192, ge=1)
    """Largest forward pass, in packed tokens (each prompt once, each response once): a micro-batch above it is
    split into several passes with the same result, bounding activation memory (192: 0.97x the peak of 256 at
    0.92-1.02x its speed on 2 CPU cores, benchmarks/train_speed.py). Raise it on a large GPU; null: one pass per
    micro-batch."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass: less memory (0.88x peak on the training
    benchmark), more compute (0.83x its pairs/s on a 2-core CPU)."""
    bf16: bool | None = None
    """Forward and backward under bfloat16 autocast (weights and optimizer stay float32). null: on CUDA GPUs
    that support it, off elsewhere (on a CPU without bfloat16 instructions it is slow)."""
    processes: int = Field(default=1, ge=1)
    """Data-parallel training processes, launched with torchrun (one per GPU on a GPU machine); an optimizer step
    takes grad_accum micro-batches on each, so the global batch is batch_size x grad_accum x processes, and N
    processes give the losses and weights of one with grad_accum x N (to rounding)."""
    fsdp: bool = False
    """With processes > 1: shard each decoder layer's weights, gradients and optimizer state over the processes
    (PyTorch FSDP) instead of a whole replica on each, for models that do not fit one device. The same steps
    as replicas, to rounding; the output layer's logits are then computed whole for the response tokens."""

    def overridden(self, settings: dict[str, Any], what: str) -> TrainSection:
        """This section with settings over it (a stage's or the warm-up's own); ConfigError naming ``what`` and
        the field when they are invalid."""
        if not isinstance(settings, dict):
            raise ConfigError(f"{what} must be a mapping of train settings")
        try:
            return TrainSection(**{**self.model_dump(), **settings})
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            raise ConfigError(f"{what}{'.' + where if where else ''}: {err['msg']}") from None

    def of_round(self, r: int) -> TrainSection:
        """These settings for round r's training: the learning rate after round_lr_decay's r - 1 decays."""
        if self.round_lr_decay == 1.0 or r <= 1:
            return self
        return self.model_copy(update={"lr": self.lr * self.round_lr_decay ** (r - 1), "round_lr_decay": 1.0})

    @model_validator(mode="after")
    def _fsdp_needs_processes(self):
        if self.fsdp and self.processes < 2:
            raise ValueError("train.fsdp shards the model over training processes: set train.processes to 2 or more")
        if self.optimizer == "lbfgs" and (self.processes > 1 or self.weight_decay > 0):
            raise ValueError(
                "train.optimizer lbfgs runs in one process without weight decay (train.processes 1, "
                "train.weight_decay 0)"
            )
        return self


class EvalSection(Section):
    max_new_tokens: int = Field(default=32, ge=1)
    batch_size: int = Field(default=64, ge=1)
    """Sequences per batch when log-probs are scored (the reference's, the analyses'). The evaluation generates in
    decode batches of sampling.batch_size, as sampling does: its answers do not depend on the batch."""
    judge: str | None = None
    """Judge of held-out accuracy. Default: the training judge when it is a verifier, else the task's judge."""
    every: int = Field(default=1, ge=1)
    """Evaluate after every k-th round (and after the last, and the starting model); the other rounds record
    that they were skipped."""
    shifted: int = Field(default=16, ge=0)
    """Greedy accuracy also on the first k of the task's shifted prompts (arithmetic: the held-out questions in
    phrasings no training prompt uses), generated in the held-out prompts' decode batches: eval.json's
    shifted_accuracy and shifted_items. 0, or a task without shifted prompts: none."""
    analyses: bool = True
    """Per-round analyses in eval.json (iterpo.stages.analyses): on held-out preference pairs, the policy's
    ranking accuracy R(pi), the idealized R* of the DPO optimum and the implicit reward's accuracy (also on pairs
    from the task's shifted prompts); KL to the reference and to the starting model; win rate against the
    starting model under the run's judge; length and distinct-n. Needs plain responses (no environment)."""
    pair_prompts: int = Field(default=16, ge=1)
    """Held-out prompts (the first ones) the analyses use: for the pairs, the KL samples and the shifted set."""
    pair_samples: int = Field(default=8, ge=2)
    """Responses per prompt sampled once from the starting model (sampling.temperature) to make the held-out
    pairs: each paired with every response to its prompt the eval judge scores lower."""
    kl_samples: int = Field(default=2, ge=0)
    """Responses per prompt sampled from each round's policy at temperature 1 for the KL estimates and
    diversity (0: none)."""


class RoundSection(Section):
    stages: list[str | dict[str, Any]] | None = None
    """The stages of each round, in order: stage names, or mappings {stage: KIND, name: LABEL, outputs: {ROLE:
    FILE}, OPTION: VALUE}. null: derived from the other sections (sample, judge, pair, look_ahead when the
    strategy asks for it, reference when the loss needs it, train, eval when there are held-out prompts)."""


class WarmupSection(Section):
    file: str | None = None
    """Demonstrations (JSONL, JSON or parquet rows with prompt and chosen) for the sft loss, or preference pairs
    (prompt, chosen, rejected) for a pairwise loss: trained on once, before round 1, from model.path. The result
    is the run's starting model: round 0's evaluation, round 1's policy, reference.policy initial. Saved as
    RUN_DIR/round-000/warmup/ (with LoRA: merged); a resumed run reads it back. null: no warm-up."""
    loss: str | dict[str, Any] = "sft"
    """The warm-up's loss: a name, or {name: ..., hyperparameters}."""
    train: dict[str, Any] = {}
    """Its training settings over the run's train section, e.g. {epochs: 1, lr: 1.0e-5}."""

    def loss_section(self) -> LossSection:
        spec = {"name": self.loss} if isinstance(self.loss, str) else dict(self.loss)
        return LossSection(**spec)


class Config(Section):
    run: RunSection = RunSection()
    model: ModelSection = ModelSection()
    task: TaskSection = TaskSection()
    sampling: SamplingSection = SamplingSection()
    reasoning: ReasoningSection | None = None
    """Responses with a reasoning part before the answer (see ReasoningSection); null: responses are answers."""
    environment: EnvironmentSection = EnvironmentSection()
    judge: JudgeSection = JudgeSection()
    pairing: PairingSection = PairingSection()
    reference: ReferenceSection = ReferenceSection()
    loss: LossSection = LossSection()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    round: RoundSection = RoundSection()
    warmup: WarmupSection = WarmupSection()


# ---------------------------------------------------------------- loading


def _format_validation_error(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        if not field:  # a check across sections: the message says it all
            parts.append(msg)
            continue
        got = f" (got {err['input']!r})" if err["type"] != "extra_forbidden" and "input" in err else ""
        parts.append(f"field '{field}': {msg}{got}")
    return f"invalid config ({source}): " + "; ".join(p.rstrip(".") for p in parts) + "."


def _apply_override(data: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected section.field=value, e.g. train.lr=1e-5")
    key, raw = assignment.split("=", 1)
    path = key.strip().split(".")
    if not all(part.strip() for part in path):
        raise ConfigError(f"--set {assignment!r}: expected section.field=value, e.g. train.lr=1e-5")
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except RecursionError:
        raise ConfigError(f"--set {key}: the value is nested too deeply") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {assignment!r}: value is not valid YAML ({exc})") from exc
    node = data
    for part in path[:-1]:
        if node.get(part) is None:  # an unset section (e.g. model.lora: null) given a field: it is set now
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment!r}: '{part}' is not a section")
    node[path[-1]] = value


# The built-in default, what `iterpo run` does with no config: the defaults above with these settings, chosen for
# the built-in model and task on the arithmetic task's tuning set, never its held-out set (README, "Tuning the
# built-in default"): four rounds, each on fresh prompts (128 of a pool of 512), a larger learning rate halved
# each round, DPO with the chosen response's NLL (Pang et al. 2024) weighted 3, and no per-round analyses (their
# time pays for the fourth round on 2 CPU cores). --set changes them like any setting;
# naming another loss (--set loss.name=...) starts from that loss's own hyperparameters.
BUILT_IN: dict[str, dict[str, Any]] = {
    "run": {"rounds": 4},
    "task": {"train_size": 512},
    "sampling": {"prompts_per_round": 128},
    "loss": {"name": "dpo_nll", "nll_weight": 3.0},
    "train": {"lr": 2.0e-5, "round_lr_decay": 0.5},
    "eval": {"analyses": False},
}


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), built_in: bool = True) -> Config:
    """Read a YAML config (or, with none, the built-in default; built_in False: the library's defaults alone),
    apply overrides, validate."""
    data: dict = {}
    source = "built-in default" if built_in else "defaults"
    if path is None and built_in:
        data = {section: dict(values) for section, values in BUILT_IN.items()}
        if any(a.split("=", 1)[0].strip() == "loss.name" for a in overrides):
            del data["loss"]  # another loss: its own hyperparameters, not the built-in loss's
    elif path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(
                f"config file {path} does not exist" if not path.exists() else f"config file {path} is not a file"
            )
        with reading("config file", path, ConfigError):
            text = path.read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
        except RecursionError:
            raise ConfigError(f"config file {path} is nested too deeply to be a config") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    for assignment in overrides:
        _apply_override(data, assignment)
    if overrides:
        source += " with --set " + " ".join(overrides)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None
    if config.run.dir is None:
        name = path.stem if path is not None else "default"
        config.run.dir = str(Path("runs") / name)
    return config
