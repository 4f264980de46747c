"""The plan: a validated config turned into the run's components and the stages of its rounds.

``build_plan`` is the one place where the config's sections meet: it builds
the task (reading prompt files), the judges, the loss, the pairing strategy
and the round's stages, and makes every check that spans sections (the
strategy's data shape against the loss's, a verifier for held-out accuracy,
reference samples for XPO and VPO, every prompt's answer for a verifier, the
model directory, LoRA targets). The CLI builds the plan before it opens the
run directory, so bad input fails before anything is written.

The round's stages are data: derived from the config (the reference stage
only when the loss needs reference log-probs, the look-ahead stage only for
future-guided pairing, evaluation only with held-out prompts), or listed by a
recipe (``round: {stages: [...]}``). Each entry is a stage name or a mapping
``{stage: KIND, name: LABEL, outputs: {ROLE: FILE}, OPTION: VALUE...}``; a
stage listed under another name writes its files with that name's suffix
(``sample_half`` writes ``rollouts_half.parquet``) unless ``outputs`` says
otherwise. Each role a stage reads comes from the latest earlier stage of the
round that writes it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from iterpo.config import Config
from iterpo.environments import Environment, make_environment
from iterpo.errors import ConfigError, DataError
from iterpo.judges import JUDGES, Judge, make_judge
from iterpo.judges.reward_model import TrainedInRun
from iterpo.losses import Loss, get_loss, loss_hyperparameters
from iterpo.losses.base import LIVE_NEEDS, LOSSES
from iterpo.models.device import resolve_device, sampling_dtype
from iterpo.models.loading import check_lora_targets, load_tokenizer, resolve_model_path
from iterpo.pairing import Strategy, build_strategy
from iterpo.records import Prompt
from iterpo.sampling.backends import choose_backend
from iterpo.stages import STAGES, Stage
from iterpo.stages.base import ServesLoss, examples_loss
from iterpo.stages.reference import SCORED_NEEDS
from iterpo.tasks import TASKS, Task, build_task

DEFAULT_ROUND = ("sample", "judge", "pair", "look_ahead", "reference", "train", "ema", "eval")
INITIAL_ROUND = ("warmup", "eval")  # round 0: the starting model (warmed up when configured), evaluated
# Settings that do not change what a run computes: they may differ when a run directory is reopened.
UNFINGERPRINTED = [
    ("run", "dir"),
    ("run", "threads"),
    ("run", "cluster"),
    ("run", "tracking"),
    ("model", "device"),
    ("train", "max_tokens_per_pass"),
    ("train", "gradient_checkpointing"),
    ("sampling", "gpu_memory_utilization"),
    ("judge", "max_failed_share"),
]
UNHASHED = [f"{section}.{key}" for section, key in UNFINGERPRINTED]  # the same, as dotted names

# Settings added after runs were made: left out of the config as run while at their default, so those runs
# keep their fingerprints and can be resumed.
OMITTED_AT_DEFAULT = {
    ("sampling", "prompts_per_round"): None,
    ("task", "shots"): 2,
    ("sampling", "exhaustive"): False,
    ("eval", "every"): 1,
    ("eval", "shifted"): 16,
    ("eval", "analyses"): True,
    ("eval", "pair_prompts"): 16,
    ("eval", "pair_samples"): 8,
    ("eval", "kl_samples"): 2,
    ("train", "fsdp"): False,
    ("train", "optimizer"): "adamw",
    ("pairing", "rationale"): False,
    ("pairing", "degrees"): 0,
    ("sampling", "dtype"): "float32",  # not the default (auto): the dtype runs made before it sampled in
    ("task", "tuning"): False,
    ("train", "lr_schedule"): "constant",
    ("train", "round_lr_decay"): 1.0,
    ("train", "first_moment"): "float32",
}


@dataclass
class Plan:
    config: Config
    resolved: dict  # the config as run: defaults filled in, the loss's hyperparameters and the judge resolved
    task: Task
    train_prompts: list[Prompt]
    eval_prompts: list[Prompt]
    judge: Judge
    eval_judge: Judge  # a verifier: held-out accuracy
    loss: Loss
    strategy: Strategy
    base_path: str  # the starting model, as from_pretrained loads it
    device: str  # where the policy runs: 'cuda', 'cuda:N', 'mps' or 'cpu'
    backend: str  # sampling backend: 'transformers' or 'vllm'
    tokenizer: Any
    stages: list[Stage]  # the stages of every round, in order
    initial_stages: list[Stage]  # round 0's
    environment: Environment | None = None  # the tool every episode may call (environment section), or None
    sampling_dtype: str = "float32"  # the weights' dtype while generating (sampling.dtype resolved)

    @property
    def system_prompt(self) -> str | None:
        """The system message of every prompt: model.system_prompt, then how to call the tool when there is one."""
        own = self.config.model.system_prompt
        if self.environment is None:
            return own
        return f"{own} {self.environment.instructions}" if own else self.environment.instructions

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.resolved)

    def config_text(self) -> str:
        return yaml.safe_dump(self.resolved, sort_keys=False)

    def round(self, r: int) -> list[Stage]:
        return self.initial_stages if r == 0 else self.stages

    def stage_labelled(self, label: str) -> Stage:
        """The round's stage of that name."""
        return next(s for s in self.stages if s.label == label)

    def uses_initial(self) -> bool:
        """Whether a pairing strategy of the round pairs against the initial model's responses (round 1's)."""
        return self.strategy.uses_initial or any(
            s.strategy_of(self).uses_initial for s in self.stages if hasattr(s, "strategy_of")
        )

    def updating(self) -> list[Stage]:
        """The round's train stages that update the policy, in order (side trainings such as EGPO's half step
        do not): each starts from what the one before made, and the last one's policy is the round's."""
        return [s for s in self.stages if s.kind == "train" and getattr(s, "updates_policy", True)]

    def policy_stage(self) -> Stage:
        """The train stage whose policy becomes the round's: the last that updates it."""
        stages = self.updating()
        if not stages:
            raise ConfigError("round.stages has no train stage that updates the policy, which this run needs")
        return stages[-1]

    def updating_before(self, stage: Stage) -> Stage | None:
        """The last policy-updating train stage before stage in the round (None: the round's start)."""
        at = next(i for i, s in enumerate(self.stages) if s is stage)
        earlier = [s for s in self.stages[:at] if s.kind == "train" and getattr(s, "updates_policy", True)]
        return earlier[-1] if earlier else None

    def stage_of_kind(self, kind: str) -> Stage:
        """The first stage of a kind in the round (ConfigError if the round has none)."""
        for stage in self.stages:
            if stage.kind == kind:
                return stage
        raise ConfigError(f"round.stages has no {kind!r} stage, which this run needs")


# ---------------------------------------------------------------- the config as run


def judge_name(config: Config) -> str:
    """The configured judge, or the task's own when judge.name is unset."""
    return config.judge.name or TASKS.get(config.task.name).default_judge


def resolve(config: Config) -> dict:
    """The config as saved with a run: the loss with every hyperparameter, the judge the task picks when unset."""
    data = config.model_dump(mode="json")
    data["loss"] = {"name": config.loss.name, **loss_hyperparameters(config.loss.name), **config.loss.hyperparams()}
    data["judge"]["name"] = judge_name(config)
    for key in ("ema_decay", "alpha"):  # a reference policy's own option, only where that policy is chosen
        if key not in config.reference.options():
            data["reference"].pop(key)
    for (section, key), default in OMITTED_AT_DEFAULT.items():
        if data[section].get(key) == default:
            data[section].pop(key)
    if config.train.optimizer != "adamw":
        data["train"].pop("first_moment", None)  # AdamW's: another optimizer has no moment to keep
    if data.get("round", {}).get("stages") is None:
        data.pop("round", None)  # a derived round is not a setting: it follows from the others
    if config.warmup.file is None:
        data.pop("warmup")  # no warm-up: its other settings change nothing
    if config.environment.name is None:
        data.pop("environment")  # flat responses: the episode limits change nothing
    if config.reasoning is None:
        data.pop("reasoning", None)  # responses are answers: as a config written before the section existed
    return data


def fingerprint(resolved: dict) -> str:
    """Hash of everything that changes results."""
    data = json.loads(json.dumps(resolved))
    for section, key in UNFINGERPRINTED:
        data.get(section, {}).pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def check_components(config: Config) -> tuple[Loss, Strategy, Judge, Judge | None]:
    """The checks across sections that need no file: loss, strategy, judges, and how they fit together."""
    loss = get_loss(config.loss.name, **config.loss.hyperparams())
    strategy = build_strategy(config.pairing, loss.data_shape)
    judge = make_judge(judge_name(config), config.judge.options())
    eval_judge = None
    if config.eval.judge is not None:
        if not JUDGES.get(config.eval.judge).verifier:
            raise ConfigError(
                f"eval.judge {config.eval.judge!r} is not a verifier; held-out accuracy needs one, e.g. exact_answer"
            )
        eval_judge = judge if config.eval.judge == judge.name else make_judge(config.eval.judge, {})
    kind = config.reference.policy
    if kind == "ema" and config.model.lora is not None:
        raise ConfigError(
            "reference.policy ema averages the policy's weights; with model.lora it would average the adapters' "
            "two factors, which is not an average of the policy. Use previous, initial or extrapolated"
        )
    check_loss(loss, f"loss {config.loss.name!r}", config)
    return loss, strategy, judge, eval_judge


def check_loss(loss: Loss, what: str, config: Config) -> None:
    """ConfigError when the loss (the run's, or a stage's own) cannot work with the configured reference policy."""
    kind = config.reference.policy
    if loss.aux_source == "reference" and kind != "previous":
        raise ConfigError(
            f"{what} needs samples from the reference policy; with reference.policy {kind!r} "
            "the round's rollouts are not (they come from the previous policy). Use reference.policy: previous"
        )
    if kind == "extrapolated" and loss.needs & LIVE_NEEDS:
        raise ConfigError(
            f"{what} runs a reference model token by token; the extrapolated reference is "
            "defined on whole responses (a difference of two policies' log-probs, not a distribution), so use "
            "reference.policy previous, initial or ema"
        )
    if kind == "extrapolated" and loss.needs & {"reference"} and not loss.reference_cancels:
        raise ConfigError(
            f"{what} uses reference log-probs of single responses (or across prompts); the "
            "extrapolated reference is known only up to a constant per prompt, which cancels only in differences "
            "between responses to one prompt (DPO, IPO, INPO, online IPO, Nash-MP, RLOO, ...)"
        )
    if loss.reference_policy is not None and kind != loss.reference_policy:
        raise ConfigError(
            f"{what} is defined against reference.policy {loss.reference_policy!r} "
            f"(the round's starting policy), not {kind!r}"
        )


# ---------------------------------------------------------------- building


def build_plan(config: Config) -> Plan:
    """Everything the run needs, checked; reads the prompt files and the tokenizer, loads no model."""
    loss, strategy, judge, eval_judge = check_components(config)
    task = build_task(config.task, config.run.seed)
    train_prompts, eval_prompts = task.train_prompts(), task.eval_prompts()
    # Held-out accuracy needs a verifier: the training judge if it is one, else the task's own judge.
    if eval_judge is None:
        eval_judge = judge if judge.verifier else make_judge(task.default_judge, {})
    judge.check()
    eval_judge.check()
    environment = None
    if config.environment.name is not None:
        environment = make_environment(config.environment.name, config.environment.options())
        environment.check()
        if config.sampling.exhaustive:
            raise ConfigError("sampling.exhaustive lists flat responses; it cannot list a tool's episodes")
        if config.reasoning is not None:
            raise ConfigError("reasoning splits flat responses; with an environment, an episode's turns are its steps")
    if config.task.name == "file":
        assert config.task.train_file is not None  # TaskSection requires train_file for task 'file'
        source = config.task.train_file
    else:
        source = f"task {config.task.name}"
    check_prompts(judge, train_prompts, source)
    check_prompts(eval_judge, eval_prompts, config.task.eval_file or source)
    base_path = resolve_model_path(config.model.path)
    if config.warmup.file is not None:
        check_warmup(config)
    if config.model.lora is not None:
        check_lora_targets(base_path, config.model.lora.target_modules)
    device = resolve_device(config.model.device)
    if device.startswith("cuda") and config.train.processes > torch.cuda.device_count():
        raise ConfigError(
            f"train.processes {config.train.processes} asks for a GPU each, but "
            f"{torch.cuda.device_count()} are visible; use at most that many, or model.device: cpu"
        )
    plan = Plan(
        config,
        resolve(config),
        task,
        train_prompts,
        eval_prompts,
        judge,
        eval_judge,
        loss,
        strategy,
        base_path,
        device,
        choose_backend(config.sampling.backend),
        load_tokenizer(base_path),
        [],
        [],
        environment,
        sampling_dtype(config.sampling.dtype, config.model.dtype, device),
    )
    if config.sampling.exhaustive and plan.backend != "transformers":
        raise ConfigError(
            "sampling.exhaustive lists every response with the transformers backend; set sampling.backend: transformers"
        )
    plan.stages = wire(round_stages(plan), "round.stages", plan)
    for stage in plan.stages:
        stage.fits(plan)
        if getattr(stage, "opponents", None) and stage.kind == "judge" and not hasattr(judge, "judge_against"):
            raise ConfigError(
                f"round.stages: judge stage {stage.label!r} compares responses with opponents, which takes a "
                f"pairwise judge; {judge.name!r} scores each response alone (use the pair stage's opponents option)"
            )
    for trained in [j for j in getattr(judge, "members", [judge]) if isinstance(j, TrainedInRun)]:  # an ensemble's too
        if not any(s.kind == trained.stage for s in plan.stages):
            raise ConfigError(
                f"judge {trained.name!r} uses the model a {trained.stage!r} stage trains each round; round.stages "
                f"lists none, so every round would be judged by its fallback {trained.fallback!r}. Add a "
                f"{trained.stage} stage"
            )
    if any(s.kind == "train" for s in plan.stages):
        plan.policy_stage()  # side trainings alone would leave every round's policy as it was
    check_stage_losses(plan)
    check_side_targets(plan)
    needs_reference = any(
        s.loss_of(plan).needs & (SCORED_NEEDS | LIVE_NEEDS) for s in plan.stages if isinstance(s, ServesLoss)
    )
    emas = [i for i, s in enumerate(plan.stages) if s.kind == "ema"]
    last_train = max((i for i, s in enumerate(plan.stages) if s is plan.policy_stage()), default=-1) if emas else -1
    if config.reference.policy == "ema" and needs_reference and (not emas or min(emas) < last_train):
        raise ConfigError("reference.policy ema needs an 'ema' stage after the round's last train stage")
    if config.sampling.prompts_per_round is not None and plan.uses_initial():
        raise ConfigError(
            f"pairing strategy {config.pairing.strategy!r} pairs against the initial model's responses, which "
            "round 1 samples; with sampling.prompts_per_round later rounds' prompts have none. Leave it unset"
        )
    plan.initial_stages = wire(
        [s for s in (STAGES.create(k, {}) for k in INITIAL_ROUND) if s.needed(plan)], "round 0", plan
    )
    return plan


def check_warmup(config: Config) -> None:
    """ConfigError or UserInputError before anything runs when the warm-up's loss, settings or file are bad."""
    from iterpo.stages.warmup import warmup_rows

    spec = config.warmup.loss_section()
    try:
        loss = get_loss(spec.name, **spec.hyperparams())
    except ValueError as exc:
        raise ConfigError(f"warmup.loss: {exc}") from None
    config.train.overridden(config.warmup.train, "warmup.train")
    if loss.data_shape not in ("pairs", "demonstrations"):
        raise ConfigError(
            f"warmup.loss {spec.name!r} trains on {loss.data_shape} data; the warm-up file holds demonstrations "
            "(sft) or preference pairs"
        )
    warmup_rows(config)


def check_prompts(judge: Judge, prompts: list[Prompt], source: str) -> None:
    """DataError naming the source when the judge cannot judge some prompt (e.g. a verifier's answer is missing)."""
    for p in prompts:
        try:
            judge.check_prompt(p)
        except DataError as exc:
            raise DataError(f"{source}: {exc}") from None


def round_stages(plan: Plan) -> list[Stage]:
    """The stages of a round: the recipe's list, or the default round's stages that this config needs."""
    entries = plan.config.round.stages
    if entries is None:
        return [s for s in (STAGES.create(kind, {}) for kind in DEFAULT_ROUND) if s.needed(plan)]
    stages = []
    for i, entry in enumerate(entries):
        spec: dict[str, Any] = {"stage": entry} if isinstance(entry, str) else dict(entry)
        if not isinstance(spec.get("stage"), str):
            raise ConfigError(f"round.stages[{i}]: expected a stage name or a mapping with 'stage', got {entry!r}")
        kind, label, outputs = spec.pop("stage"), spec.pop("name", None), spec.pop("outputs", None) or {}
        stage = STAGES.create(kind, spec)
        stage.label = label or kind
        unknown = set(outputs) - set(stage.writes)
        if unknown:
            raise ConfigError(
                f"round.stages[{i}] ({stage.label}): outputs names roles it does not write: "
                f"{sorted(unknown)}; it writes {sorted(stage.writes)}"
            )
        stage.files = dict(outputs)
        stages.append(stage)
    return stages


def check_side_targets(plan: Plan) -> None:
    """ConfigError when a loss reads side targets its pair stage does not make, or a pair stage asks for
    rationales the run's judge does not write."""
    for stage in plan.stages:
        if stage.kind != "pair" or not isinstance(stage, ServesLoss) or not hasattr(stage, "strategy_of"):
            continue
        loss, options = stage.loss_of(plan), stage.strategy_of(plan).shared()
        where = f"stage {stage.label!r}" if stage.label != "pair" else "pairing"
        if "side_targets" in loss.needs and not (options.rationale or options.degrees):
            raise ConfigError(
                f"{where}: loss {type(loss).__name__} trains on side targets; set pairing.rationale: true "
                "(rationale_dpo) or pairing.degrees (ssl_dpo)"
            )
        if (options.rationale or options.degrees) and loss.data_shape != "pairs":
            raise ConfigError(
                f"{where}: rationale and degrees give pairs side targets; the loss trains on {loss.data_shape}"
            )
        if options.rationale and not plan.judge.explains:
            raise ConfigError(
                f"{where}: pairing.rationale reads the judge's written reasons; judge {plan.judge.name!r} writes none "
                "(self_judge and pairwise_http do)"
            )


def check_stage_losses(plan: Plan) -> None:
    """Each stage's own loss and pairing options are valid, and the stages of one loss fit together: a train or
    reference stage reads examples of its loss's data shape, and a train stage's stored log-probs come from a
    reference stage that scored what its loss needs."""

    def loss(stage: Stage) -> Loss:
        if not isinstance(stage, ServesLoss):  # a stage passing examples through: the loss they were built for
            return examples_loss(plan, stage) if "examples" in stage.writes else plan.loss
        try:
            out = stage.loss_of(plan)
            if hasattr(stage, "strategy_of"):
                stage.strategy_of(plan)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"round.stages: stage {stage.label!r}: {exc}") from None
        if stage.loss is not None:
            check_loss(out, f"loss {stage.loss_spec(plan)['name']!r} of stage {stage.label!r}", plan.config)
        return out

    writer = {name: stage for stage in plan.stages for name in stage.files.values()}
    for stage in plan.stages:
        mine = loss(stage)
        if stage.kind == "train" and hasattr(stage, "settings"):
            stage.settings(plan)  # the stage's own train settings are valid
        if plan.config.sampling.exhaustive and stage.kind == "train" and not mine.exact_weights:
            raise ConfigError(
                f"sampling.exhaustive: the loss of stage {stage.label!r} ({type(mine).__name__}) is written for "
                "drawn samples and has no exact form over listed, probability-weighted responses; exact: "
                + ", ".join(sorted(n for n in LOSSES.names() if LOSSES.get(n).exact_weights))
            )
        source = writer.get(stage.inputs.get("examples", ""))
        if source is not None and stage.kind in ("train", "reference") and loss(source).data_shape != mine.data_shape:
            raise ConfigError(
                f"round.stages: stage {stage.label!r} serves a loss on {mine.data_shape} data, but the examples it "
                f"reads come from stage {source.label!r}, which builds {loss(source).data_shape}; give the stages "
                "of one loss the same loss option"
            )
        scorer = writer.get(stage.inputs.get("ref_logps", ""))
        if stage.kind == "train" and scorer is not None:
            if scorer.inputs.get("examples") != stage.inputs["examples"]:
                raise ConfigError(
                    f"round.stages: stage {stage.label!r} trains on {stage.inputs['examples']}, but its log-probs "
                    f"come from stage {scorer.label!r}, which scored {scorer.inputs.get('examples')}; put the "
                    f"stages that change the examples (e.g. replay) before {scorer.label!r}"
                )
            missing = (mine.needs & SCORED_NEEDS) - loss(scorer).needs
            if missing:
                raise ConfigError(
                    f"round.stages: stage {stage.label!r}'s loss needs {sorted(missing)} log-probs, which stage "
                    f"{scorer.label!r} does not score for its own loss; give both the same loss option"
                )


def _named(default: str, stage: Stage) -> str:
    """A stage's file under its own name: 'sample_half' writes rollouts_half.parquet where 'sample' writes
    rollouts.parquet."""
    if stage.label == stage.kind:
        return default
    suffix = stage.label[len(stage.kind) + 1 :] if stage.label.startswith(stage.kind + "_") else stage.label
    path = Path(default)
    return f"{path.stem}_{suffix}{path.suffix}"


def wire(stages: list[Stage], where: str, plan: Plan) -> list[Stage]:
    """Give each stage its files: what it writes, and for each role it reads the latest earlier writer's file."""
    latest: dict[str, str] = {}
    labels: set[str] = set()
    written: dict[str, str] = {}
    for i, stage in enumerate(stages):
        if not stage.writes:
            raise ConfigError(f"{where}: stage {stage.label!r} writes no file, so the run cannot tell when it is done")
        if stage.label in labels:
            raise ConfigError(f"{where}: two stages are named {stage.label!r}; give one another name ('name: ...')")
        labels.add(stage.label)
        try:
            stage.check(stages[:i])
            reads = stage.reads_for(plan)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: stage {stage.label!r}: {exc}") from None
        for role in reads:
            if role not in latest:
                raise ConfigError(
                    f"{where}: stage {stage.label!r} reads {role}, which no earlier stage of the round writes"
                )
            stage.inputs[role] = latest[role]
        for role, default in stage.writes.items():
            name = stage.files.get(role) or _named(default, stage)
            if name in written:
                raise ConfigError(f"{where}: stages {written[name]!r} and {stage.label!r} both write {name}")
            stage.files[role] = name
            written[name] = stage.label
            latest[role] = name
    return stages
