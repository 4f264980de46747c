"""A pairwise judge behind any OpenAI-compatible chat endpoint (vLLM, llama.cpp server, TGI, hosted APIs).

Requests run concurrently (at most ``concurrency`` at once), each with a
timeout; timeouts, connection errors, 429 and 5xx answers are retried with
exponential backoff. A reply that names neither response clearly is recorded
as unparseable (never guessed); the other order's answer then stands alone.
A wrong key, URL or model (401, 403, 404) stops the run with a clear error
before anything more is written: every comparison would fail the same way.
When ``give_up_after`` requests in a row get no answer even after their
retries (the server went away), the judge reports an outage: the requests
still queued fail at once without being sent, and the judging stage stops
the run (iterpo.judges.base.judge_all) so that a resume asks them again.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from iterpo.errors import UserInputError
from iterpo.judges.base import register_judge
from iterpo.judges.pairwise import PairwiseJudge, fill

_BRACKETED = re.compile(r"\[\[\s*([AB])\s*\]\]")  # MT-Bench style "[[A]]"
_ALONE = re.compile(r"\W*(?:(?:response|answer|output|assistant)\s*)?\(?([AB])\)?\W*", re.IGNORECASE)
_NAMED = re.compile(
    r"\b(?:response|answer|output|assistant|verdict|choice)\s*(?:is\s*)?:?\s*\(?([AB])\)?(?![\w'])", re.IGNORECASE
)


REPLY_KEPT = 2000  # characters of a reply kept as the comparison's detail (and rationale)


def parse_verdict(reply: str) -> str | None:
    """'A' or 'B' when the reply clearly picks one, else None."""
    text = reply.strip()
    for found in (
        _BRACKETED.findall(text),
        [m.group(1)] if (m := _ALONE.fullmatch(text)) else [],
        _NAMED.findall(text),
    ):
        letters = {x.upper() for x in found}
        if len(letters) == 1:
            return letters.pop()
        if len(letters) > 1:
            return None  # names both: ambiguous
    return None


class Refused(Exception):
    """The endpoint answered, but refused this one request (a 4xx other than 401/403/404 and 429)."""


class EndpointError(UserInputError):
    """The endpoint refuses every request (bad key, URL or model)."""


@register_judge("pairwise_http")
@dataclass
class PairwiseHTTP(PairwiseJudge):
    """Ask an OpenAI-compatible ``/chat/completions`` endpoint which of two responses is better."""

    name = "pairwise_http"
    explains = True
    base_url: str = ""
    """The API root, e.g. http://localhost:8000/v1 (requests go to BASE_URL/chat/completions)."""
    model: str = ""
    """The model name the endpoint serves."""
    api_key_env: str | None = "OPENAI_API_KEY"
    """Environment variable holding the key (sent as a Bearer token); null: send no key."""
    temperature: float = 0.0
    max_tokens: int = 16
    """Reply length; the template asks for one letter."""
    timeout_s: float = 60.0
    """Per-request timeout."""
    max_retries: int = 3
    """Retries after a timeout, a connection error, 429 or 5xx."""
    backoff_s: float = 1.0
    """First retry waits this long; each next one twice as long."""
    concurrency: int = 8
    """Requests in flight at once."""
    give_up_after: int = 8
    """Requests in a row that get no answer after all their retries before the endpoint counts as down."""
    volatile_options = ("api_key_env", "timeout_s", "max_retries", "backoff_s", "concurrency", "give_up_after")

    def __post_init__(self):
        super().__post_init__()
        self._lock = threading.Lock()
        self._unanswered = 0  # requests in a row that failed after their retries
        self._down: str | None = None
        if not re.match(r"https?://", self.base_url):
            raise ValueError(f"option base_url must be an http(s) URL, got {self.base_url!r}")
        if not self.model:
            raise ValueError("option model is required (the model name the endpoint serves)")
        if (
            self.timeout_s <= 0
            or self.max_retries < 0
            or self.backoff_s < 0
            or self.concurrency < 1
            or self.give_up_after < 1
        ):
            raise ValueError(
                "options need timeout_s > 0, max_retries >= 0, backoff_s >= 0, concurrency >= 1, give_up_after >= 1"
            )

    def outage(self) -> str | None:
        return self._down

    def _answered(self, ok: bool, why: str = "") -> None:
        """Count requests that got no answer in a row; at give_up_after the endpoint counts as down."""
        with self._lock:
            self._unanswered = 0 if ok else self._unanswered + 1
            if self._unanswered >= self.give_up_after and self._down is None:
                self._down = (
                    f"{self._unanswered} requests in a row to {self.base_url} got no answer after "
                    f"{self.max_retries} retries each (last: {why})"
                )

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise EndpointError(
                    f"judge pairwise_http: environment variable {self.api_key_env} (api_key_env) is not "
                    "set; set it, or set judge.api_key_env: null for an endpoint without a key"
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _request(self, content: str, headers: dict) -> str:
        """The reply text, after retries; raises EndpointError on 401/403/404, RuntimeError when retries run out."""
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": content}],
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
            }
        ).encode()
        url = self.base_url.rstrip("/") + "/chat/completions"
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                req = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    data = json.loads(resp.read())
                return data["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403, 404):
                    raise EndpointError(
                        f"judge pairwise_http: {url} answered {exc.code} {exc.reason}; check base_url, "
                        f"model ({self.model!r}) and the key in {self.api_key_env}"
                    ) from None
                last = f"HTTP {exc.code}"
                if exc.code != 429 and exc.code < 500:  # this request is refused; retrying will not help
                    raise Refused(f"refused: HTTP {exc.code} {exc.reason}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
                last = (
                    "timeout" if isinstance(getattr(exc, "reason", exc), TimeoutError) else f"connection error: {exc}"
                )
            except (ValueError, KeyError, IndexError, TypeError):
                last = "malformed response body"
        raise RuntimeError(last)

    def _one(self, prompt, a: str, b: str, headers: dict) -> tuple[float | None, str]:
        if self._down is not None:
            return None, "not asked: the endpoint is down"
        try:
            reply = self._request(fill(self.template, prompt, a, b), headers)
        except Refused as exc:  # the server answered (e.g. 400: this prompt is too long for it): it is not down
            self._answered(True)
            return None, str(exc)
        except RuntimeError as exc:
            self._answered(False, str(exc))
            return None, f"request failed after {self.max_retries} retries: {exc}"
        self._answered(True)
        letter = parse_verdict(reply)
        if letter is None:
            return None, f"unparseable reply: {reply[:80]!r}"
        return (1.0 if letter == "A" else 0.0), reply.strip()[:REPLY_KEPT]  # its reasoning: the pair's rationale

    def ask(self, prompt, pairs):
        headers = self._headers()
        pool = ThreadPoolExecutor(self.concurrency)
        try:
            answers = list(pool.map(lambda ab: self._one(prompt, ab[0], ab[1], headers), pairs))
        except BaseException:  # Ctrl-C, or a refused key: drop the queued requests instead of sending them
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        return answers
