"""The OpenAI-compatible pairwise judge against a small local server started by the test."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from iterpo.judges import JudgeCache, JudgeContext, make_judge
from iterpo.judges.http import EndpointError, parse_verdict
from iterpo.records import Prompt, Rollout


class Endpoint:
    """A fake chat endpoint. It prefers the response holding the reference answer, and misbehaves on cue:

    a response containing SLOW is answered after a delay longer than the client's timeout the first
    time it is seen; FLAKY gets a 500 first; GARBLE gets a reply that names no response.
    """

    def __init__(self, key="sekret"):
        self.key, self.requests, self.in_flight, self.max_in_flight = key, [], 0, 0
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with endpoint.lock:
                    endpoint.requests.append(body)
                    endpoint.in_flight += 1
                    endpoint.max_in_flight = max(endpoint.max_in_flight, endpoint.in_flight)
                try:
                    self._answer(body)
                except BrokenPipeError:  # the client gave up waiting (a timeout under test)
                    pass
                finally:
                    with endpoint.lock:
                        endpoint.in_flight -= 1

            def _answer(self, body):
                if self.path != "/v1/chat/completions" or self.headers.get("Authorization") != f"Bearer {endpoint.key}":
                    self.send_response(401 if self.path == "/v1/chat/completions" else 404)
                    self.end_headers()
                    return
                text = body["messages"][0]["content"]
                a = text.split("[Response A]")[1].split("[Response B]")[0]
                b = text.split("[Response B]")[1]
                with endpoint.lock:
                    first_time = text not in endpoint.seen
                    endpoint.seen.add(text)
                time.sleep(0.05)  # let requests overlap
                if "SLOW" in a + b and first_time:
                    time.sleep(1.5)
                if "FLAKY" in a + b and first_time:
                    self.send_response(500)
                    self.end_headers()
                    return
                if "GARBLE" in a + b:
                    reply = "Both have merits; hard to say."
                else:
                    reply = "[[A]]" if "4" in a and "4" not in b else ("Response B is better." if "4" in b else "A")
                out = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def endpoint(monkeypatch):
    e = Endpoint()
    monkeypatch.setenv("TEST_JUDGE_KEY", "sekret")
    yield e
    e.server.shutdown()


PROMPT = Prompt("p", [{"role": "user", "content": "What is 2 + 2?"}], "4")


def _judge(endpoint, cache=None, **options):
    options = {
        "base_url": endpoint.url,
        "model": "judge-model",
        "api_key_env": "TEST_JUDGE_KEY",
        "timeout_s": 0.5,
        "max_retries": 2,
        "backoff_s": 0.01,
        "concurrency": 3,
        **options,
    }
    judge = make_judge("pairwise_http", options)
    judge.setup(JudgeContext(1, 0, cache if cache is not None else JudgeCache()))
    return judge


def test_parse_verdict():
    assert parse_verdict("[[B]]") == "B" and parse_verdict(" a. ") == "A" and parse_verdict("Response B") == "B"
    assert parse_verdict("After thought, the better answer is (A).") == "A"
    assert parse_verdict("Response A is fine but Response B is better") is None  # names both: not guessed
    assert parse_verdict("Both are good.") is None and parse_verdict("") is None


def test_http_judge_both_orders_retries_and_concurrency(endpoint):
    texts = ["4", "5", "The answer is 4", "22 FLAKY"]
    rollouts = [Rollout("p", i, 1, 0, t, [1], "stop") for i, t in enumerate(texts)]
    cache = JudgeCache()
    verdicts = _judge(endpoint, cache).judge(PROMPT, rollouts)
    asked = {r["messages"][0]["content"] for r in endpoint.requests}
    assert len(asked) == 12  # every ordered pair of 4 responses, once each
    assert len(endpoint.requests) == 12 + 6  # each of the 6 comparisons with FLAKY got a 500, then a retry
    assert 2 <= endpoint.max_in_flight <= 3  # requests overlap, within the concurrency limit
    assert all(r["model"] == "judge-model" and r["temperature"] == 0.0 for r in endpoint.requests)
    # responses with the answer beat the others in both orders
    assert verdicts[0].beats[1] == 1.0 and verdicts[2].beats[3] == 1.0 and verdicts[0].beats[2] == 0.5
    assert verdicts[0].win_rate == pytest.approx((0.5 + 1 + 0.5 + 1) / 4)
    assert not any(v.failed for v in verdicts)
    assert len(endpoint.requests) == 18
    # a second judging (resume, re-pair) is served by the cache
    n = len(endpoint.requests)
    again = _judge(endpoint, cache).judge(PROMPT, rollouts)
    assert len(endpoint.requests) == n and [v.score for v in again] == [v.score for v in verdicts]
    # the judge's reply comparing each response (first) with each other one is kept: the pair's rationale
    assert verdicts[0].rationales[1] == "[[A]]" and verdicts[1].rationales[0] == "Response B is better."
    assert verdicts[0].rationales[0] == "" and again[0].rationales == verdicts[0].rationales


def test_http_judge_records_unparseable_and_failed_requests(endpoint):
    texts = ["4", "GARBLE 4", "nothing SLOW", "5"]
    rollouts = [Rollout("p", i, 1, 0, t, [1], "stop") for i, t in enumerate(texts)]
    verdicts = _judge(endpoint, max_retries=0).judge(PROMPT, rollouts)
    # every comparison of GARBLE is unparseable in both orders: recorded as failed, not guessed
    assert verdicts[1].failed and "unparseable reply" in verdicts[1].detail and math_nan(verdicts[1].beats[0])
    # SLOW timed out in both orders (first sight, no retries): its comparisons are failures, recorded
    assert verdicts[2].failed and "timeout" in verdicts[2].detail
    assert not verdicts[0].failed and math_nan(verdicts[0].beats[2]) and verdicts[0].beats[3] == 1.0
    # with retries the slow answers arrive on the second attempt
    verdicts = _judge(endpoint, max_retries=1).judge(PROMPT, rollouts)
    assert not verdicts[2].failed and verdicts[0].beats[2] == 1.0


def math_nan(x):
    return x != x


def test_http_judge_refuses_bad_key_or_url(endpoint, monkeypatch):
    rollouts = [Rollout("p", i, 1, 0, t, [1], "stop") for i, t in enumerate(["4", "5"])]
    monkeypatch.setenv("TEST_JUDGE_KEY", "wrong")
    with pytest.raises(EndpointError, match="401"):
        _judge(endpoint).judge(PROMPT, rollouts)
    monkeypatch.delenv("TEST_JUDGE_KEY")
    with pytest.raises(EndpointError, match="TEST_JUDGE_KEY"):
        _judge(endpoint).judge(PROMPT, rollouts)
    with pytest.raises(Exception, match="base_url"):
        make_judge("pairwise_http", {"base_url": "localhost:8000", "model": "m"})
