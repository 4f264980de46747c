"""Pairwise judges: which of two responses is better? Both orders asked, verdicts turned into win rates.

For a prompt's K responses every unordered pair {i, j} is compared twice, as
(i, j) and as (j, i), to cancel position bias:

    P(i beats j) = ½ [ P(first wins | i first) + 1 - P(first wins | j first) ]

(when one order is unparseable the other stands alone; when both are, the
comparison is recorded as failed). Each response's verdict then carries

    beats[j] = P(i beats j)                         (NaN where unknown)
    win_rate = (½ + Σ_j beats[j]) / (1 + #known j)  SPPO's estimate of P(i beats the policy), self included
               (with sampling.exhaustive, each term weighted by the response's probability: exactly P(i beats pi))
    score    = win_rate

so best-vs-worst pairing, SPPO's and GPO's win-rate targets, and soft labels
all read the pairwise verdicts directly. Each ordered comparison is cached in
the run's judgement cache. Identical responses tie at ½ without asking.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass

from iterpo.judges.base import Judge, cache_key, prompt_key, register_judge
from iterpo.models.device import resolve_device
from iterpo.models.logprobs import next_token_odds
from iterpo.records import Judgement, Prompt, Rollout

# The text is part of the judge's identity (cached verdicts are keyed by it): keep it as it is.
DEFAULT_TEMPLATE = (
    "Which response answers the user's request better? Judge correctness first, then helpfulness and brevity.\n"
    """
[Request]
{prompt}

[Response A]
{response_a}

[Response B]
{response_b}

Reply with one letter: A or B."""
)

PLACEHOLDERS = {"prompt", "response_a", "response_b", "answer"}


def check_template(template: str) -> None:
    """ValueError unless template uses only known placeholders and shows both responses."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ValueError(f"option template is not a valid format string: {exc}") from None
    unknown = names - PLACEHOLDERS
    if unknown:
        raise ValueError(
            f"option template uses unknown placeholder(s) {sorted(unknown)}; known: {sorted(PLACEHOLDERS)}"
        )
    if not {"response_a", "response_b"} <= names:
        raise ValueError("option template must contain {response_a} and {response_b}")


def fill(template: str, prompt: Prompt, a: str, b: str) -> str:
    return template.format(prompt=prompt.text, response_a=a, response_b=b, answer=prompt.answer or "")


@dataclass
class PairwiseJudge(Judge):
    """Base of the pairwise judges: subclasses implement ``ask`` for one ordered comparison each."""

    pointwise = False
    unit = "comparisons"
    template: str = DEFAULT_TEMPLATE
    """The question: {prompt}, {response_a}, {response_b} and optionally {answer} (the reference answer)."""

    def __post_init__(self):
        check_template(self.template)

    def ask(self, prompt: Prompt, pairs: list[tuple[str, str]]) -> list[tuple[float | None, str]]:
        """For each ordered pair (first, second): P(first is better), or None and why it could not be read."""
        raise NotImplementedError  # pragma: no cover

    def _answers(
        self, prompt: Prompt, ordered: list[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[float | None, str]]:
        """One answer per ordered pair of distinct texts: from the cache, else asked now (all misses in one call)."""
        if self.context is None:
            raise RuntimeError(f"{self.name} needs the round's context (its cache): call setup() before judge()")
        cache, ident, pkey = self.context.cache, self.identity(), prompt_key(prompt)
        known: dict[tuple[str, str], tuple[float | None, str]] = {}
        for a, b in ordered:
            hit = cache.get(cache_key(ident, pkey, a, b))
            if hit is not None:
                known[(a, b)] = (hit["p_first"], hit["detail"])
        todo = list(dict.fromkeys(pair for pair in ordered if pair not in known))
        if todo:
            for (a, b), (p, detail) in zip(todo, self.ask(prompt, todo)):
                known[(a, b)] = (p, detail)
                if p is not None:  # failures are asked again next time
                    cache.put(cache_key(ident, pkey, a, b), {"p_first": p, "detail": detail})
        self.tally().add(len(ordered), [known[pair][1] for pair in ordered if known[pair][0] is None])
        return known

    def judge(self, prompt: Prompt, rollouts: list[Rollout]) -> list[Judgement]:
        texts = [r.text for r in rollouts]
        K = len(rollouts)
        ordered = [(i, j) for i in range(K) for j in range(K) if i != j and texts[i] != texts[j]]
        known = self._answers(prompt, [(texts[i], texts[j]) for i, j in ordered])
        answers = {(i, j): known[(texts[i], texts[j])] for i, j in ordered}
        return self._verdicts(rollouts, texts, answers)

    def judge_against(self, prompt: Prompt, rollouts: list[Rollout], opponents: list[Rollout]) -> list[Judgement]:
        """Each response compared with every opponent (another policy's responses to the prompt, e.g. Nash-MD's
        mixture), both orders; its win rate is the mean P(it beats the opponent), each opponent weighted by its
        probability where sampling listed them all, so it estimates P(it beats the opponents' policy)."""
        pairs = [(r.text, o.text) for r in rollouts for o in opponents if r.text != o.text]
        known = self._answers(prompt, pairs + [(b, a) for a, b in pairs])
        weight = [1.0 if o.weight is None else o.weight for o in opponents]
        out = []
        for r in rollouts:
            total = mass = 0.0
            why: list[str] = []
            for o, w in zip(opponents, weight):
                if o.text == r.text:
                    p: float | None = 0.5
                else:
                    forward, backward = known[(r.text, o.text)][0], known[(o.text, r.text)][0]
                    found = [x for x in (forward, None if backward is None else 1 - backward) if x is not None]
                    p = sum(found) / len(found) if found else None
                    if p is None:
                        why += [known[(r.text, o.text)][1], known[(o.text, r.text)][1]]
                if p is not None:
                    total, mass = total + w * p, mass + w
            if mass == 0.0:
                reason = "; ".join(dict.fromkeys(why)) or "no opponent"
                out.append(
                    Judgement(
                        r.prompt_id, r.sample_idx, self.name, 0.0, f"every comparison failed: {reason}", failed=True
                    )
                )
                continue
            win_rate = total / mass
            detail = f"win rate {win_rate:.2f} against {len(opponents)} opponents"
            out.append(Judgement(r.prompt_id, r.sample_idx, self.name, win_rate, detail, win_rate=win_rate))
        return out

    def _verdicts(self, rollouts, texts, answers) -> list[Judgement]:
        K = len(rollouts)
        beats = [[math.nan] * K for _ in range(K)]
        unreadable = [0] * K
        reasons: list[list[str]] = [[] for _ in range(K)]
        for i in range(K):
            for j in range(K):
                if i == j:
                    continue
                if texts[i] == texts[j]:
                    beats[i][j] = 0.5
                    continue
                forward, backward = answers[(i, j)][0], answers[(j, i)][0]
                estimates = [p for p in (forward, None if backward is None else 1 - backward) if p is not None]
                unreadable[i] += (forward is None) + (backward is None)
                if estimates:
                    beats[i][j] = sum(estimates) / len(estimates)
                else:
                    reasons[i] += [answers[(i, j)][1], answers[(j, i)][1]]
        out = []
        for i, r in enumerate(rollouts):
            known = [p for j, p in enumerate(beats[i]) if j != i and not math.isnan(p)]
            if K > 1 and not known:
                why = "; ".join(dict.fromkeys(reasons[i])) or "no opponent"
                out.append(
                    Judgement(
                        r.prompt_id,
                        r.sample_idx,
                        self.name,
                        0.0,
                        f"every comparison failed: {why}",
                        failed=True,
                        beats=beats[i],
                    )
                )
                continue
            # opponents weigh by their probability where sampling listed every response (else 1 each)
            weight = [1.0 if x.weight is None else x.weight for x in rollouts]
            mass = weight[i] + sum(weight[j] for j, p in enumerate(beats[i]) if j != i and not math.isnan(p))
            win_rate = (
                0.5 * weight[i] + sum(weight[j] * p for j, p in enumerate(beats[i]) if j != i and not math.isnan(p))
            ) / mass
            detail = f"win rate {win_rate:.2f} over {len(known)} opponents"
            if unreadable[i]:
                detail += f"; {unreadable[i]} unparseable answers"
            rationales = []
            if self.explains:  # its reply comparing this response (first) with each other one
                rationales = [
                    answers[(i, j)][1] if (i, j) in answers and answers[(i, j)][0] is not None else "" for j in range(K)
                ]
            out.append(
                Judgement(
                    r.prompt_id,
                    r.sample_idx,
                    self.name,
                    win_rate,
                    detail,
                    win_rate=win_rate,
                    beats=beats[i],
                    rationales=rationales,
                )
            )
        return out


@register_judge("pairwise_lm")
@dataclass
class PairwiseLM(PairwiseJudge):
    """A local causal LM asked which response is better; P(first) = softmax over its next-token logits for A and B.

    Reading the probability instead of sampling a reply means an answer is never
    unparseable. The model is any local Hugging Face directory, .gguf file, or
    the built-in model's name; it loads on first use.
    """

    name = "pairwise_lm"
    path: str = "smollm2-135m-instruct"
    """The judge model: a local directory, a .gguf file, or the built-in model's name."""
    batch_size: int = 16
    """Comparisons per forward pass."""
    device: str = "auto"
    """Where the judge model runs (auto: a CUDA GPU, else MPS, else the CPU)."""
    volatile_options = ("batch_size", "device")

    def __post_init__(self):
        super().__post_init__()
        if self.batch_size < 1:
            raise ValueError("option batch_size must be >= 1")
        self._model = self._tokenizer = None

    def check(self) -> None:
        from iterpo.models.loading import resolve_model_path

        resolve_model_path(self.path, "judge pairwise_lm: path")

    def _load(self):
        if self._model is None:
            from iterpo.models.loading import load_model, load_tokenizer, resolve_model_path

            what = "judge pairwise_lm: path"
            path = resolve_model_path(self.path, what)
            device = resolve_device(self.device, "judge pairwise_lm: device")
            self._tokenizer, self._model = load_tokenizer(path, what), load_model(path, "float32", what, device)
            self._model.eval()
            ids = [self._tokenizer.encode(x, add_special_tokens=False) for x in ("A", "B")]
            self._letters = [x[0] for x in ids]
        return self._model, self._tokenizer

    def ask(self, prompt, pairs):
        from iterpo.models.chat import encode_prompt

        model, tok = self._load()
        seqs = [encode_prompt(tok, [{"role": "user", "content": fill(self.template, prompt, a, b)}]) for a, b in pairs]
        pad = tok.pad_token_id or 0
        p_first = next_token_odds(model, seqs, pad, self._letters[0], self._letters[1], self.batch_size)  # P("A")
        return [(p, f"P(A)={p:.3f}") if math.isfinite(p) else (None, "non-finite logits") for p in p_first]
