"""`iterpo export`: a run's preferences as a Hugging Face dataset in TRL's conversational layout.

Each row is one pair a train stage trained on: ``prompt`` holds the chat
messages the responses followed (the run's system prompt, the prompt's
messages, and a refinement's request when the pair is in the refine format),
``chosen`` and ``rejected`` one assistant message each, holding the whole
response as its tokens decode (a reasoning part included). Any trainer that
applies the model's chat template to these messages (TRL's DPOTrainer,
OpenRLHF) then sees the prompt iterpo trained after, not the prompt's bare
text that ``preferences.parquet`` keeps. Columns beside them say where each
pair came from (round, prompt id, scores, sources). A pair a replay stage
trained on again in later rounds is exported once, in the round that made it.
"""

from __future__ import annotations

from pathlib import Path

from iterpo.errors import UserInputError
from iterpo.records import Preference, Rollout
from iterpo.stages.base import examples_source


def examples_file(plan) -> str:
    """The examples file of the round's policy stage, before any replay stage added earlier rounds' pairs."""
    name, _ = examples_source(plan, plan.policy_stage().input("examples"), lambda s: s.kind == "replay")
    return name


def export_rows(ctx, rounds: list[int]) -> list[dict]:
    """The pairs the round's policy was trained on, for each of rounds, as rows of the conversational layout."""
    plan, store, decode = ctx.plan, ctx.store, ctx.tokenizer.decode
    stage = plan.policy_stage()
    if stage.loss_of(plan).data_shape != "pairs":
        raise UserInputError(f"export writes preference pairs; this run trains on {stage.loss_of(plan).data_shape}")
    system = [{"role": "system", "content": plan.system_prompt}] if plan.system_prompt is not None else []
    rows: list[dict] = []
    name = examples_file(plan)
    for r in rounds:
        path = store.path(r, name)
        if not path.exists():
            raise UserInputError(f"round {r} has no {path.name} yet (it has not been paired)")
        responses: dict[tuple[str, str, int], Rollout] = ctx.responses(r)
        whole = lambda pid, source, idx, found=responses: decode(  # noqa: E731
            found[(pid, source, idx)].token_ids, skip_special_tokens=True
        )
        for x in ctx.read(r, name, Preference):
            prompt = system + [dict(m) for m in ctx.prompt(x.prompt_id).messages] + [dict(m) for m in x.context]
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": [{"role": "assistant", "content": whole(x.prompt_id, x.chosen_source, x.chosen_idx)}],
                    "rejected": [
                        {"role": "assistant", "content": whole(x.prompt_id, x.rejected_source, x.rejected_idx)}
                    ],
                    "round": r,
                    "prompt_id": x.prompt_id,
                    "chosen_score": x.chosen_score,
                    "rejected_score": x.rejected_score,
                    "chosen_source": x.chosen_source,
                    "rejected_source": x.rejected_source,
                }
            )
    return rows


def export_run(run_dir: str | Path, rounds: list[int] | None, to: str | Path) -> int:
    """Write the preferences of rounds (default: every paired round) of the run at run_dir as a dataset saved to
    ``to`` (datasets' save_to_disk, loaded back by datasets.load_from_disk); how many rows."""
    from datasets import Dataset

    from iterpo.config import load_config
    from iterpo.plan import build_plan
    from iterpo.stages import RunContext
    from iterpo.store import RunStore

    store = RunStore.existing(run_dir)
    config = load_config(store.config_path)
    plan = build_plan(config)
    ctx = RunContext(plan, store)
    if rounds is None:
        name = examples_file(plan)
        rounds = [r for r in range(1, config.run.rounds + 1) if store.path(r, name).exists()]
    if not rounds:
        raise UserInputError(f"{run_dir} has no paired round to export yet")
    target = Path(to)
    if target.exists() and any(target.iterdir()):
        raise UserInputError(f"{target} exists and is not empty; export writes a new dataset directory")
    rows = export_rows(ctx, rounds)
    Dataset.from_list(rows).save_to_disk(str(target))
    return len(rows)
