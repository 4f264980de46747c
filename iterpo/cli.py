"""The ``iterpo`` command.

Exit codes: 0 success, 2 invalid input (config, data, arguments, run
directory) with a one-paragraph message, 1 any other failure (a run that
cannot go on, e.g. a judge that stopped answering or a full disk, says why in
one paragraph; a bug shows its traceback), 130 / 143 when stopped by Ctrl-C
(SIGINT) / SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import textwrap
import threading
from pathlib import Path

from iterpo.errors import RunFailure, UserInputError
from iterpo.registry import load_plugins

_RUN_DIR: list[str] = []  # the run directory this command works on, for the "how to resume" hint


def _cmd_run(args) -> None:
    from iterpo.config import load_config

    config = load_config(args.config, args.set or [])
    _execute(config, force=args.force)


def _cmd_resume(args) -> None:
    from iterpo.config import load_config
    from iterpo.store import RunStore

    store = RunStore.existing(args.run_dir)
    config = load_config(store.config_path, args.set or [])
    config.run.dir = str(store.root)
    _execute(config, force=args.force)


def _execute(config, force: bool) -> None:
    from iterpo import driver
    from iterpo.progress import console

    plan, store = driver.open_run(config, force)  # the plan first: bad input fails before anything is written
    _RUN_DIR.append(str(store.root))
    try:
        console.print(f"iterpo: run directory [bold]{store.root}[/bold] (config {store.config_path})")
        driver.run(plan, store)
        console.print(f"done: everything is in {store.root}")
    finally:
        store.close()


def _cmd_train(args) -> None:
    import torch

    from iterpo.config import load_config
    from iterpo.io import write_json, write_text
    from iterpo.losses import get_loss
    from iterpo.models.loading import save_policy
    from iterpo.progress import bar, console
    from iterpo.training.offline import check_loss, read_preferences, train_file

    if args.loss:  # before the config: its pairing check would otherwise speak of a pairing strategy
        check_loss(get_loss(args.loss), [], args.loss)
    overrides = list(args.set or []) + [f"model.path={args.model}"] + ([f"loss.name={args.loss}"] if args.loss else [])
    # no config: the library's defaults (DPO), not the built-in run's settings, which are for its own task
    config = load_config(args.config, overrides, built_in=False)
    get_loss(config.loss.name, **config.loss.hyperparams())  # an unknown loss or hyperparameter fails now
    output = Path(args.output or Path("runs") / ("train-" + Path(args.preferences).stem))
    if output.exists() and not output.is_dir():
        raise UserInputError(f"--output: {output} exists and is not a directory")
    if (output / "checkpoint").exists() and not args.force:
        raise UserInputError(
            f"--output: {output} already holds a trained checkpoint; choose another directory "
            "or pass --force to replace it"
        )
    sft = get_loss(config.loss.name, **config.loss.hyperparams()).data_shape == "demonstrations"
    rows = read_preferences(args.preferences, demonstrations=sft)  # bad input fails before the model loads
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    console.print(
        f"iterpo train: {len(rows)} {'demonstrations' if sft else 'pairs'} from {args.preferences}, "
        f"loss {config.loss.name}, model {config.model.path}"
    )
    model, tokenizer, examples, result = train_file(config, rows, bar)
    output.mkdir(parents=True, exist_ok=True)
    write_text(output / "train.jsonl", "".join(json.dumps(row) + "\n" for row in result.log))
    if getattr(examples[0], "ref_logps", None) is not None:
        write_text(
            output / "ref_logps.jsonl",
            "".join(
                json.dumps({"row": i, "chosen": e.ref_logps[0], "rejected": e.ref_logps[1]}) + "\n"
                for i, e in enumerate(examples)
            ),
        )
    save_policy(model, tokenizer, output / "checkpoint")
    summary = {
        "pairs": result.pairs,
        "epochs": config.train.epochs,
        "reference_seconds": result.reference_seconds,
        "train_seconds": result.train_seconds,
        "pairs_per_second": result.pairs_per_second,
        "first_loss": result.log[0].get("loss"),
        "last_loss": result.log[-1].get("loss"),
        "config": json.loads(config.model_dump_json()),
    }
    write_json(output / "summary.json", summary)
    console.print(
        f"trained {result.pairs} pairs x {config.train.epochs} epochs in "
        f"{result.reference_seconds + result.train_seconds:.1f} s ({result.pairs_per_second:.2f} pairs/s; "
        f"reference {result.reference_seconds:.1f} s); loss {summary['first_loss']:.4f} -> "
        f"{summary['last_loss']:.4f}; policy saved to {output / 'checkpoint'}"
    )


def _cmd_train_rm(args) -> None:
    from iterpo.io import write_json
    from iterpo.models.device import resolve_device
    from iterpo.models.loading import resolve_model_path
    from iterpo.progress import bar, console
    from iterpo.training.offline import read_preferences
    from iterpo.training.reward_model import (
        RewardTraining,
        pairs_of_rows,
        save_reward_model,
        steps,
        train_preference_model,
    )

    opts = RewardTraining(
        kind=args.kind.replace("-", "_"),
        dims=args.dims,
        tau=args.tau,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        heldout=args.heldout,
        max_length=args.max_length,
        seed=args.seed,
    )
    try:
        opts.check()
    except ValueError as exc:
        raise UserInputError(str(exc)) from None
    output = Path(args.output or Path("runs") / ("rm-" + Path(args.preferences).stem))
    if (output / "reward_model").exists() and not args.force:
        raise UserInputError(
            f"--output: {output} already holds a reward model; choose another directory or pass --force to replace it"
        )
    pairs = pairs_of_rows(read_preferences(args.preferences))  # bad input fails before the model loads
    backbone = resolve_model_path(args.model, "--model")
    device = resolve_device(args.device, "--device")
    console.print(f"iterpo train-rm: {len(pairs)} pairs from {args.preferences}, backbone {args.model}")
    with bar("reward model", steps(pairs, opts)) as advance:
        try:
            model, tok, report = train_preference_model(backbone, pairs, opts, device, advance)
        except ValueError as exc:
            raise UserInputError(f"--heldout: {exc}") from None
    output.mkdir(parents=True, exist_ok=True)
    save_reward_model(model, tok, output / "reward_model")
    write_json(output / "report.json", {"backbone": args.model, **dataclasses.asdict(report)})
    held = "-" if report.heldout_accuracy is None else f"{report.heldout_accuracy:.3f}"
    judge = "reward_model" if opts.kind == "bradley_terry" else "general_preference"
    console.print(
        f"trained on {report.train_pairs} pairs in {report.seconds:.1f} s; held-out pair accuracy {held} "
        f"({report.heldout_pairs} pairs); saved to {output / 'reward_model'} (judge: {judge} with path)"
    )


def _cmd_compare(args) -> None:
    from iterpo.compare import run_compare

    command = "iterpo compare " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "iterpo compare"
    run_compare(args.configs, args.seeds, args.dir, list(args.set or []), command)


def _cmd_status(args) -> None:
    from iterpo.config import load_config
    from iterpo.progress import console, round_table
    from iterpo.store import RunStore
    from iterpo.summary import round_summary

    store = RunStore.existing(args.run_dir)
    config = load_config(store.config_path)
    rows = [round_summary(store, r) for r in range(0, config.run.rounds + 1)]
    console.print(round_table(rows, config.task.tuning))
    manifest = store.manifest() or {}
    last = _policy_stage_label(config)  # a round is trained when the stage that makes its policy finished
    done = [r["round"] for r in rows[1:] if f"round-{r['round']:03d}/{last}" in manifest.get("stages", {})]
    fingerprint = manifest.get("config_fingerprint")
    console.print(f"{len(done)} of {config.run.rounds} rounds trained; config fingerprint {fingerprint}")


def _cmd_export(args) -> None:
    from iterpo.export import export_run
    from iterpo.progress import console

    rounds = None
    if args.rounds:
        try:
            rounds = [int(x) for x in args.rounds.split(",") if x.strip()]
        except ValueError:
            raise UserInputError(f"--rounds: expected round numbers separated by commas, got {args.rounds!r}") from None
    n = export_run(args.run_dir, rounds, args.to)
    console.print(f"exported {n} pairs to {args.to} (load it with datasets.load_from_disk)")


def _cmd_report(args) -> None:
    from iterpo.progress import console
    from iterpo.report import write_report

    path = write_report(args.run_dir, args.out, args.prompts)
    console.print(f"report written to {path} (one self-contained page: open it in a browser)")


def _policy_stage_label(config) -> str:
    """The label of the stage that makes a round's policy (the round's last policy-updating train stage), read
    from the config alone: status should not need the model or the judge."""
    label = "train"
    for entry in config.round.stages or []:
        spec = {"stage": entry} if isinstance(entry, str) else entry
        if spec.get("stage") == "train" and spec.get("updates_policy", True):
            label = spec.get("name") or "train"
    return label


def _cmd_losses(args) -> None:
    from iterpo.losses import LOSSES, list_losses, loss_hyperparameters

    print(f"{'name':<11} {'data':<8} {'hyperparameters (defaults)':<42} method (paper)")
    for name in list_losses():
        cls = LOSSES.get(name)
        summary = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        hp = (
            ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in loss_hyperparameters(name).items()
            )
            or "-"
        )
        print(f"{name:<11} {cls.data_shape:<8} {hp:<42} {summary}")


def _options(cls) -> str:
    """A registered dataclass's options with their defaults, long texts abbreviated."""
    import dataclasses

    out = []
    for f in dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else []:
        if not f.init:  # state, not an option
            continue
        value = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else "?")
        )
        text = f"{value:.4g}" if isinstance(value, float) else repr(value) if isinstance(value, str) else str(value)
        out.append(f"{f.name}={text if len(text) <= 24 else '<text>'}")
    return ", ".join(out) or "-"


def _summary(cls) -> str:
    return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())


def _cmd_judges(args) -> None:
    from iterpo.judges import JUDGES

    for name in JUDGES.names():
        cls = JUDGES.get(name)
        print(f"{name:<16} {_summary(cls)}\n{'':<16} options: {_options(cls)}")


def _cmd_environments(args) -> None:
    from iterpo.environments import ENVIRONMENTS

    for name in ENVIRONMENTS.names():
        cls = ENVIRONMENTS.get(name)
        print(f"{name:<12} <{cls.tag}>...</{cls.tag}>  {_summary(cls)}\n{'':<12} options: {_options(cls)}")
    print("\nEvery environment also reads environment.max_turns, max_tokens and max_observation_tokens.")


def _cmd_pairing(args) -> None:
    from iterpo.pairing import PAIRING

    print(f"{'name':<21} {'data':<8} {'options (defaults)':<26} what it builds")
    for name in PAIRING.names():
        cls = PAIRING.get(name)
        print(f"{name:<21} {cls.data_shape:<8} {_options(cls):<26} {_summary(cls)}")
    print(
        "\nEvery strategy also reads pairing.pairs_per_prompt, threshold, group_size, length_penalty, prefer_shorter."
    )


def _cmd_games(args) -> None:
    from pathlib import Path

    from iterpo.games.report import (
        GAME_FAMILIES,
        METHODS,
        convergence_table,
        format_convergence,
        format_sampled,
        sampled_table,
    )

    kinds = args.game or list(GAME_FAMILIES)
    for kind in kinds:
        if kind not in GAME_FAMILIES and not Path(kind).is_file():
            raise UserInputError(f"--game {kind!r}: not a game family (random, rps, cyclic, bt) nor an existing file")
    betas = args.beta or [0.1, 0.01]
    if any(not b > 0 for b in betas):
        raise UserInputError("--beta must be > 0")
    for flag, value, ok in [
        ("--seeds", args.seeds, args.seeds >= 1),
        ("--iterations", args.iterations, args.iterations >= 1),
        ("--target", args.target, args.target > 0),
        ("--sampled", args.sampled, args.sampled is None or args.sampled >= 1),
    ]:
        if not ok:
            raise UserInputError(f"{flag} must be {'> 0' if flag == '--target' else 'at least 1'}, got {value}")
    methods = [m for m in METHODS if not args.algorithm or m.algorithm in args.algorithm]
    if not methods:
        from iterpo.games import ALGORITHMS

        raise UserInputError(f"--algorithm: none of {args.algorithm} is known; known: {', '.join(ALGORITHMS.names())}")
    rows = convergence_table(
        kinds, betas, args.seeds, args.iterations, args.target, methods, Path(args.plots) if args.plots else None
    )
    print(format_convergence(rows, args.target))
    if args.sampled:
        for kind in kinds:
            for beta in betas:
                its = min(args.iterations, 1000)
                srows = sampled_table(kind, beta, args.seeds, its, args.sampled, methods)
                print()
                print(format_sampled(srows, kind, beta, args.sampled, its))
    if args.plots:
        print(f"\nplots written to {args.plots}/")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iterpo", description="Iterative preference optimization of language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the loop (with no config: the built-in default)")
    run.add_argument("config", nargs="?", help="YAML config file (default: the built-in default)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. train.lr=1e-5")
    run.add_argument("--force", action="store_true", help="continue a run directory made with a different config")
    run.set_defaults(fn=_cmd_run)

    resume = sub.add_parser("resume", help="continue a run from where it stopped")
    resume.add_argument("run_dir")
    resume.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    resume.add_argument("--force", action="store_true", help="accept overrides that change the config")
    resume.set_defaults(fn=_cmd_resume)

    train = sub.add_parser("train", help="one round of offline preference training from a preference file")
    train.add_argument("config", nargs="?", help="YAML config whose loss, train and model sections apply (optional)")
    train.add_argument(
        "--preferences",
        required=True,
        metavar="FILE",
        help="prompt/chosen/rejected rows (optional soft_label): .jsonl, .json or .parquet",
    )
    train.add_argument(
        "--model",
        required=True,
        metavar="PATH",
        help="the built-in model name, a Hugging Face directory or a .gguf file",
    )
    train.add_argument("--loss", help="a registered loss (see `iterpo losses`; default: the config's, dpo)")
    train.add_argument("--output", metavar="DIR", help="where the policy and logs go (default: runs/train-<file name>)")
    train.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. loss.beta=0.05"
    )
    train.add_argument("--force", action="store_true", help="replace a checkpoint already in --output")
    train.set_defaults(fn=_cmd_train)

    train_rm = sub.add_parser(
        "train-rm", help="train a Bradley-Terry reward model (or a general preference model) on a preference file"
    )
    train_rm.add_argument("--preferences", required=True, metavar="FILE", help="prompt/chosen/rejected rows")
    train_rm.add_argument("--model", required=True, metavar="PATH", help="the backbone (as for iterpo train)")
    train_rm.add_argument("--output", help="a directory for reward_model/ and report.json (default: runs/rm-FILE)")
    train_rm.add_argument(
        "--kind",
        choices=["bradley-terry", "general-preference"],
        default="bradley-terry",
        help="a reward model (reward_model judge) or a general preference model, GPM (general_preference judge)",
    )
    train_rm.add_argument("--dims", type=int, default=4, help="general-preference: the embedding's size (even)")
    train_rm.add_argument("--tau", type=float, default=0.1, help="general-preference: P = sigmoid(s / tau)")
    train_rm.add_argument("--epochs", type=int, default=2)
    train_rm.add_argument("--lr", type=float, default=1.0e-5)
    train_rm.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step")
    train_rm.add_argument("--heldout", type=float, default=0.2, help="share of prompts held out for the accuracy")
    train_rm.add_argument("--max-length", type=int, default=512)
    train_rm.add_argument("--seed", type=int, default=0)
    train_rm.add_argument("--device", default="auto")
    train_rm.add_argument("--force", action="store_true", help="replace a reward model already in --output")
    train_rm.set_defaults(fn=_cmd_train_rm)

    compare = sub.add_parser(
        "compare", help="run recipes on equal budgets over several seeds; held-out scores with bootstrap intervals"
    )
    compare.add_argument("configs", nargs="+", help="YAML configs (recipes) to compare")
    compare.add_argument("--seeds", type=int, default=3, help="runs per recipe, with run.seed 0, 1, ... (default 3)")
    compare.add_argument("--dir", default="runs/compare", help="where the member runs go (default runs/compare)")
    compare.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field of every config")
    compare.set_defaults(fn=_cmd_compare)

    status = sub.add_parser("status", help="show a run's rounds so far")
    status.add_argument("run_dir")
    status.set_defaults(fn=_cmd_status)

    export = sub.add_parser(
        "export", help="write a run's preference pairs as a Hugging Face dataset in TRL's conversational layout"
    )
    export.add_argument("run_dir")
    export.add_argument("--rounds", help="rounds to export, e.g. 1,3 (default: every paired round)")
    export.add_argument("--to", required=True, help="a new directory for the dataset")
    export.set_defaults(fn=_cmd_export)

    report = sub.add_parser("report", help="write a run's HTML report: plots per round, samples, config")
    report.add_argument("run_dir")
    report.add_argument("--out", help="the page to write (default: RUN_DIR/report.html)")
    report.add_argument(
        "--prompts", type=int, default=50, help="prompts per round whose samples the page lists (default: 50)"
    )
    report.set_defaults(fn=_cmd_report)

    losses = sub.add_parser("losses", help="list the registered preference losses")
    losses.set_defaults(fn=_cmd_losses)

    judges = sub.add_parser("judges", help="list the registered judges and their options")
    judges.set_defaults(fn=_cmd_judges)

    environments = sub.add_parser("environments", help="list the tools a policy can call and their options")
    environments.set_defaults(fn=_cmd_environments)

    pairing = sub.add_parser("pairing", help="list the registered pairing strategies and their options")
    pairing.set_defaults(fn=_cmd_pairing)

    games = sub.add_parser("games", help="run the iterative algorithms on exactly solvable preference games")
    games.add_argument(
        "--game",
        action="append",
        metavar="KIND",
        help="random (EGPO's random games), rps, cyclic, bt (Bradley-Terry), or a .npy/.csv matrix file; "
        "repeatable (default: random, rps, cyclic, bt)",
    )
    games.add_argument("--beta", action="append", type=float, help="regularisation (repeatable; default 0.1 and 0.01)")
    games.add_argument("--seeds", type=int, default=10, help="random games per family (default 10)")
    games.add_argument("--iterations", type=int, default=3000, help="iteration cap (default 3000)")
    games.add_argument("--target", type=float, default=1e-6, help="duality gap to reach (default 1e-6)")
    games.add_argument("--algorithm", action="append", help="only these algorithms (default: all)")
    games.add_argument(
        "--sampled",
        type=int,
        metavar="S",
        help="also run with S sampled preferences per query and report final gaps with 95%% intervals",
    )
    games.add_argument("--plots", metavar="DIR", help="write SVG convergence plots to DIR")
    games.set_defaults(fn=_cmd_games)
    return parser


def _quiet_libraries() -> None:
    """iterpo shows its own progress bars; silence transformers' per-load bars and hints."""
    import logging
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: stop at once, keep what is finished."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _print_error(text: str) -> None:
    print(
        "iterpo: error: "
        + textwrap.fill(" ".join(text.split()), width=100, break_long_words=False, break_on_hyphens=False),
        file=sys.stderr,
    )


def _resume_hint() -> str:
    """How to go on, for a command that worked on a run directory ('' for the others)."""
    if not _RUN_DIR:
        return ""
    return f"finished stages are kept; `iterpo resume {_RUN_DIR[-1]}` continues from the last one"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse exits with 2 on bad arguments
    _RUN_DIR.clear()
    _quiet_libraries()
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        load_plugins()
        args.fn(args)
    except UserInputError as exc:
        _print_error(str(exc))
        return 2
    except RunFailure as exc:
        _print_error(f"{str(exc).rstrip('.')}." + (f" The run stopped; {_resume_hint()}." if _RUN_DIR else ""))
        return 1
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        hint = f"; {_resume_hint()}" if _RUN_DIR else ""
        print(f"iterpo: {'terminated (SIGTERM)' if terminated else 'interrupted'}{hint}", file=sys.stderr)
        code = 143 if terminated else 130
        if threading.active_count() > 1:  # e.g. a judge's requests in flight: do not wait for them to time out
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
