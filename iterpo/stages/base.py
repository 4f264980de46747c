"""The stage contract and its registry.

A round is a list of stages, data rather than code: iterpo.plan derives it
from the config (the reference stage only when the loss needs reference
log-probs, the look-ahead stage only for future-guided pairing, ...), and a
recipe may list its own (``round: {stages: [...]}``), the same stage twice
under different names included.

A stage is a registered dataclass whose fields are its options. It declares
the roles of the files it reads and writes (``rollouts``, ``judgements``,
``examples``, ...); the plan points each role a stage reads at the file of the
latest earlier stage in the round that writes it, so a stage reads what an
earlier stage wrote, through the run store, and never its memory: any stage
can be resumed, re-run or sent elsewhere. ``run(ctx, round)`` does the work and
returns the figures the manifest records; the driver skips a stage whose
outputs are there and intact.

A new stage is one decorated class in one module (a plugin module named in
ITERPO_PLUGINS works too):

    @register_stage("count_words")
    @dataclass
    class CountWords(Stage):
        reads = ("rollouts",)
        writes = {"word_counts": "word_counts.json"}

        def run(self, ctx, r):
            rollouts = ctx.read(r, self.file("rollouts"), Rollout)
            ctx.store.write_json(ctx.store.path(r, self.file("word_counts")), ...)
            return {"responses": len(rollouts)}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from iterpo.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from iterpo.stages.context import RunContext


@dataclass
class Stage:
    """One step of a round. Subclasses set ``reads``/``writes`` and implement ``run``."""

    kind: ClassVar[str] = ""  # the registered name, set by register_stage
    reads: ClassVar[tuple[str, ...]] = ()  # roles of the files it reads
    writes: ClassVar[dict[str, str]] = {}  # role -> default file name in the round directory; the first marks it done
    model_role: ClassVar[str] = ""  # the role of a model it trains for a judge of later rounds, if any

    def __post_init__(self) -> None:
        self.label = self.kind  # the name it has in its round (a stage may appear twice under two names)
        self.inputs: dict[str, str] = {}  # role -> file it reads (set by the plan)
        self.files: dict[str, str] = {}  # role -> file it writes (set by the plan)

    def needed(self, plan: Any) -> bool:
        """Whether the round derived from a config includes this stage (recipes that list stages decide for
        themselves)."""
        return True

    def check(self, earlier: list[Stage]) -> None:
        """ValueError when the stage's options do not fit the stages before it in the round."""

    def fits(self, plan: Any) -> None:
        """ConfigError, before anything runs, when the stage cannot work with the run's components (its judge, its
        environment, ...)."""

    def reads_for(self, plan: Any) -> tuple[str, ...]:
        """The roles it reads in this plan (a stage may need some only for some losses)."""
        return self.reads

    def file(self, role: str) -> str:
        """The file name this stage writes for role, or else reads for it."""
        return self.files[role] if role in self.files else self.inputs[role]

    def input(self, role: str) -> str:
        """The file name this stage reads for role (also when it writes a new version of that role)."""
        return self.inputs[role]

    def outputs(self) -> list[str]:
        """The files it writes, the one that marks it done first."""
        return [self.files[role] for role in self.writes]

    def run(self, ctx: RunContext, r: int) -> dict:  # pragma: no cover
        raise NotImplementedError


@dataclass
class ServesLoss(Stage):
    """A stage that works for one loss (pair, reference, train): the run's, or its own ``loss`` option, so that
    one round can train two losses, e.g. SFT on the best responses, then DPO."""

    loss: str | dict[str, Any] | None = None
    """This stage's loss: a name or {name: ..., hyperparameters...}; default: the run's loss section. Give the
    same to the pair, reference and train stages of that loss."""

    def loss_of(self, plan: Any) -> Any:
        """The loss this stage serves (a Loss; built once, ConfigError if the option is bad)."""
        if self.loss is None:
            return plan.loss
        if getattr(self, "_loss", None) is None:
            from iterpo.losses import get_loss

            if not isinstance(self.loss, str | dict):
                raise ValueError(f"loss must be a loss name or a mapping with 'name', got {self.loss!r}")
            spec = {"name": self.loss} if isinstance(self.loss, str) else dict(self.loss)
            if not isinstance(spec.get("name"), str) or not all(isinstance(k, str) for k in spec):
                raise ValueError(f"loss must be a loss name or a mapping with 'name', got {self.loss!r}")
            name = spec.pop("name")
            self._loss = get_loss(name, **spec)
            self._loss_spec = {"name": name, **spec}
        return self._loss

    def loss_spec(self, plan: Any) -> dict[str, Any]:
        """{name: ..., hyperparameters...} of the loss this stage serves, as a training process builds it again."""
        if self.loss is None:
            return {"name": plan.config.loss.name, **plan.config.loss.hyperparams()}
        self.loss_of(plan)
        return dict(self._loss_spec)


def examples_source(plan: Any, name: str, through: Callable[[Stage], bool]) -> tuple[str, Stage | None]:
    """The examples file ``name`` of the round traced back past the stages that wrote it from other examples and
    that ``through`` accepts: (that file, the stage that wrote it, or None when no stage of the round does)."""
    writer = {file: s for s in plan.stages for file in s.files.values()}
    source = writer.get(name)
    while source is not None and through(source):
        name = source.inputs.get("examples", "")
        source = writer.get(name)
    return name, source


def examples_loss(plan: Any, stage: Stage) -> Any:
    """The loss whose examples ``stage`` reads: that of the stage that built them, past stages that pass examples
    through (replay, strength, look_ahead); the run's loss when no stage of the round serves another."""
    _, source = examples_source(plan, stage.inputs.get("examples", ""), lambda s: not isinstance(s, ServesLoss))
    return source.loss_of(plan) if isinstance(source, ServesLoss) else plan.loss


STAGES: Registry[type[Stage]] = Registry("stage")


def register_stage(name: str):
    """Class decorator: register a Stage subclass under name (its ``kind``)."""

    def decorator(cls):
        cls.kind = name
        return STAGES.register(name)(cls)

    return decorator
