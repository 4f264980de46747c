"""A judge that fails systematically stops the run before pairing; a resume asks again only what failed."""

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from iterpo.config import load_config
from iterpo.errors import JudgeFailure
from iterpo.plan import build_plan

from helpers import REPO, cli_env, run_config, tiny_config


class Endpoint:
    """A stand-in OpenAI-compatible judge: prefers the shorter response (ties: the first).

    After ``answer`` requests it stops answering: later requests get their connection dropped and the listening
    socket is closed, as when a server process dies in the middle of a stage.
    """

    def __init__(self, port: int = 0, answer: int = 10**9):
        self.requests, self.lock, self.answer = [], threading.Lock(), answer
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with endpoint.lock:
                    endpoint.requests.append(body["messages"][0]["content"])
                    n = len(endpoint.requests)
                if n > endpoint.answer:
                    self.close_connection = True
                    threading.Thread(target=endpoint.stop, daemon=True).start()
                    return  # no reply: the client sees the connection dropped
                text = body["messages"][0]["content"]
                a = text.split("[Response A]")[1].split("[Response B]")[0]
                b = text.split("[Response B]")[1].split("Reply with")[0]
                out = json.dumps({"choices": [{"message": {"content": "A" if len(a) <= len(b) else "B"}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def _config(tiny_model_dir, run_dir, port, tmp_path):
    cfg = tiny_config(tiny_model_dir, run_dir, **{"run.rounds": 1, "task.train_size": 6, "sampling.shard_size": 2})
    cfg["judge"] = {
        "name": "pairwise_http",
        "base_url": f"http://127.0.0.1:{port}/v1",
        "model": "judge",
        "api_key_env": None,
        "timeout_s": 5,
        "max_retries": 1,
        "backoff_s": 0.01,
        "concurrency": 2,
        "give_up_after": 4,
    }
    path = tmp_path / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(*args):
    done = subprocess.run(
        [sys.executable, "-m", "iterpo", *args], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300
    )
    return done.returncode, " ".join(done.stderr.split())


def _cached_keys(run: Path) -> int:
    return sum(pq.read_table(p).num_rows for p in (run / "judge-cache").glob("shard-*.parquet"))


def test_endpoint_that_dies_mid_stage_stops_the_run_and_resume_asks_only_the_rest(tiny_model_dir, tmp_path):
    healthy = Endpoint()
    port = healthy.port
    code, err = _cli("run", str(_config(tiny_model_dir, tmp_path / "clean", port, tmp_path)))
    healthy.stop()
    assert code == 0, err
    comparisons = len(healthy.requests)  # every ordered comparison of round 1, each asked once
    assert comparisons > 40

    Endpoint(port, answer=25)  # it serves until it stops answering
    run = tmp_path / "outage"
    code, err = _cli("run", str(_config(tiny_model_dir, run, port, tmp_path)))
    assert code == 1, err
    assert "judge pairwise_http stopped answering" in err and "round 1, stage judge" in err, err
    assert "got no answer" in err and f"iterpo resume {run}" in err and "Traceback" not in err
    assert not (run / "round-001" / "judgements.parquet").exists()  # the stage is left unfinished
    assert 20 <= _cached_keys(run) <= 25  # what was answered is kept (the last prompt's answers may be lost)
    cached = _cached_keys(run)

    back = Endpoint(port)
    code, err = _cli("resume", str(run))
    back.stop()
    assert code == 0, err
    assert len(back.requests) == comparisons - cached  # exactly the comparisons with no saved verdict
    for name in ("judgements.parquet", "preferences.parquet"):  # (as JSON text: NaN, an unknown comparison, != NaN)
        assert json.dumps(pq.read_table(run / "round-001" / name).to_pylist()) == json.dumps(
            pq.read_table(tmp_path / "clean" / "round-001" / name).to_pylist()
        )
    assert json.loads((run / "round-001" / "eval.json").read_text()) == json.loads(
        (tmp_path / "clean" / "round-001" / "eval.json").read_text()
    )


def test_too_many_failed_verdicts_stop_before_pairing(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", **{"run.rounds": 1})
    cfg["judge"] = {"name": "token_sum_failing"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    config = load_config(path)
    with pytest.raises(JudgeFailure, match=r"token_sum_failing: \d+ of 32 responses failed .*most common: no score"):
        run_config(config)
    assert not (tmp_path / "run" / "round-001" / "judgements.parquet").exists()
    assert (tmp_path / "run" / "round-001" / "rollouts.parquet").exists()
    # accepting the failures is a resume option: it does not change the run's fingerprint
    relaxed = load_config(path, ["judge.max_failed_share=1"])
    assert build_plan(relaxed).fingerprint == build_plan(config).fingerprint
    run_config(relaxed)
    judged = pq.read_table(tmp_path / "run" / "round-001" / "judgements.parquet").to_pylist()
    assert any(j["failed"] for j in judged) and not all(j["failed"] for j in judged)


def test_a_self_judge_that_writes_no_score_stops_the_run(tiny_model_dir, tmp_path):
    """The random tiny model never writes "Score: N": every self-judgement fails, so the stage stops the run."""
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", **{"run.rounds": 1, "task.train_size": 2})
    cfg["judge"] = {"name": "self_judge", "samples": 1, "max_new_tokens": 6}
    cfg["task"]["name"] = "constraints"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    config = load_config(path)
    with pytest.raises(JudgeFailure, match=r"self_judge: 8 of 8 responses failed \(100%.*no score in 1 evaluations"):
        run_config(config)
    assert not (tmp_path / "run" / "round-001" / "judgements.parquet").exists()
