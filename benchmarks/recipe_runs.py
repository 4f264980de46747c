"""What the recipe benchmarks share: running a config into its own run directory (a finished run is read, an
interrupted one resumed), and reading its held-out scores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml


def run(name: str, cfg: dict, out: Path, rounds: int) -> Path:
    """Run cfg for rounds (resuming, or reading a finished run) into out/name; its directory."""
    run_dir = out / name
    cfg["run"] = {**cfg.get("run", {}), "dir": str(run_dir), "rounds": rounds}
    if not (run_dir / f"round-{rounds:03d}" / "eval.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        verb = "resume" if (run_dir / "manifest.json").is_file() else "run"
        cmd = [sys.executable, "-m", "iterpo", verb, str(run_dir if verb == "resume" else path)]
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)
    return run_dir


def accuracy(run_dir: Path, rounds: int) -> list[float]:
    """Held-out score after rounds 0 .. rounds."""
    return [json.loads((run_dir / f"round-{r:03d}" / "eval.json").read_text())["accuracy"] for r in range(rounds + 1)]
