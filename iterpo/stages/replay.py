"""replay: the round's pairs together with the fresh pairs of the rounds before it.

Iterative DPO trains each round on the pairs of that round's samples alone, and
those pairs teach what the policy of that round gets wrong. When its mistakes
lean one way (arithmetic: a carry added where there is none), the round's
training can move the policy past the middle, and the next round's pairs teach
the other way. Replaying earlier rounds' pairs beside the new ones, as the
preference data of successive rounds accumulates in RLHF pipelines (Llama 2,
Touvron et al. 2023), keeps both sides in each round's training.

The stage reads the examples an earlier stage of this round wrote (the pair
stage's) and the same file of each of the ``rounds`` rounds before, at most
``per_round`` of each (a draw seeded by run seed, round and the replayed round),
and writes them all as the round's examples. A replayed pair names its
responses under the source ``<source>@r<round>`` (``policy@r1``), and the stage
copies those responses into the round's ``replayed_rollouts.parquet`` under
that name, each keeping the round it was sampled in, so the reference and
train stages after it read them as any response of the round: reference
log-probs of a replayed pair are computed again, under this round's reference.
Only replays of the examples an earlier round made itself: a replayed pair is
never replayed again.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from iterpo.errors import ConfigError, DataError
from iterpo.records import Preference, Rollout, to_table
from iterpo.sampling import derive_seed
from iterpo.stages.base import Stage, examples_loss, register_stage


@register_stage("replay")
@dataclass
class Replay(Stage):
    """This round's pairs and the fresh pairs of the ``rounds`` rounds before it."""

    reads = ("examples",)
    writes = {"examples": "replayed_preferences.parquet", "replay_rollouts": "replayed_rollouts.parquet"}

    rounds: int = 1
    """How many rounds before this one give their pairs (fewer in the first rounds)."""
    per_round: int | None = None
    """At most this many pairs of each earlier round, drawn without replacement (default: all of them)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")
        if self.per_round is not None and self.per_round < 1:
            raise ValueError(f"per_round must be at least 1, got {self.per_round}")

    def fits(self, plan) -> None:
        loss = examples_loss(plan, self)  # the loss the pairs it reads were built for
        name = type(loss).__name__
        if loss.data_shape != "pairs":
            raise ConfigError(
                f"round.stages: {self.label} replays preference pairs; {name} trains on {loss.data_shape}"
            )
        if "aux_samples" in loss.needs:
            raise ConfigError(
                f"round.stages: {self.label}: {name} reads extra samples of the round's own policy beside each "
                "pair, which a pair of an earlier round does not have"
            )

    def run(self, ctx, r):
        store, name = ctx.store, self.input("examples")
        examples = ctx.read(r, name, Preference)
        replayed: list[Preference] = []
        copied: dict[tuple[str, str, int], Rollout] = {}
        counts = {}
        for q in range(max(1, r - self.rounds), r):
            if store.check(store.path(q, name)) != "ok":
                raise DataError(
                    f"round.stages: {self.label}: round {q}'s {name} is missing or damaged; nothing to replay"
                )
            earlier = ctx.read(q, name, Preference)
            if self.per_round is not None and len(earlier) > self.per_round:
                rng = random.Random(derive_seed(ctx.config.run.seed, r, self.label, q))
                earlier = [earlier[i] for i in sorted(rng.sample(range(len(earlier)), self.per_round))]
            responses = ctx.responses(q)
            for x in earlier:
                for source, idx in ((x.chosen_source, x.chosen_idx), (x.rejected_source, x.rejected_idx)):
                    if (x.prompt_id, source, idx) not in responses:
                        raise DataError(
                            f"round.stages: {self.label}: a pair of round {q} ({name}) names response {idx} of "
                            f"prompt {x.prompt_id} from {source}, which no file of round {q} holds"
                        )
                    renamed = f"{source}@r{q}"
                    copied[(x.prompt_id, renamed, idx)] = dataclasses.replace(
                        responses[(x.prompt_id, source, idx)], source=renamed
                    )
                replayed.append(
                    dataclasses.replace(
                        x, chosen_source=f"{x.chosen_source}@r{q}", rejected_source=f"{x.rejected_source}@r{q}"
                    )
                )
            counts[f"round_{q}"] = len(earlier)
        store.write_parquet(store.path(r, self.file("replay_rollouts")), to_table(list(copied.values()), Rollout))
        store.write_parquet(store.path(r, self.file("examples")), to_table(examples + replayed, Preference))
        return {"examples": len(examples) + len(replayed), "fresh": len(examples), "replayed": counts}
