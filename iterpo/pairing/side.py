"""Side targets of a pair: text the policy also learns to write, after a request of its own, beside the
preference (PreferenceBatch.side_logps; the losses rationale_dpo and ssl_dpo weigh their likelihood).

- A rationale (Just et al. 2024, "Data-Centric Human Preference Optimization
  with Rationales"): the judge's written reason for its verdict, to be written
  after the question, the preferred and the other response, so the policy
  learns why one is better as well as that it is.
- Degrees of removed content (Li et al. 2024, "Self-supervised Preference
  Optimization"): the chosen response with its k most content-laden sentences
  (or lines; numbers weigh double) deleted, k = 0 .. degrees, each shown with the question "how many
  key sentences were removed?" and the answer k: a self-supervised task that
  makes the policy sensitive to how much of a good answer is missing.
"""

from __future__ import annotations

import re

from iterpo.records import Preference

RATIONALE_REQUEST = (
    "Question: {question}\n\nPreferred response: {preferred}\n\nOther response: {other}\n\n"
    "Explain why the preferred response is better."
)
DEGREE_REQUEST = (
    "Question: {question}\n\nAnswer: {answer}\n\n"
    "How many key sentences were removed from this answer? Reply with one number."
)
_SENTENCE = re.compile(r"[^\n.!?]+[.!?]*")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_WORD = re.compile(r"[A-Za-z]{4,}")


def rationale_of(chosen, rejected) -> str | None:
    """The judge's reason for preferring chosen over rejected (Candidates): a pairwise judge's reply comparing
    the two, else its explanations of each response's verdict, else None."""
    j = chosen.judgement
    if chosen.source == rejected.source and rejected.idx < len(j.rationales) and j.rationales[rejected.idx]:
        return j.rationales[rejected.idx]
    mine, theirs = j.rationale, rejected.judgement.rationale
    if mine and theirs:
        return f"On the preferred response: {mine.strip()}\nOn the other response: {theirs.strip()}"
    return None


def rationale_target(pair: Preference, rationale: str) -> dict[str, str]:
    return {
        "request": RATIONALE_REQUEST.format(question=pair.prompt, preferred=pair.chosen, other=pair.rejected),
        "target": rationale.strip(),
    }


def sentences(text: str) -> list[str]:
    """A response's sentences, or its lines where it has no sentence ends (steps, code), in order."""
    return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]


def without_key_sentences(text: str, k: int) -> str:
    """text with its k key sentences deleted: those holding the most content, a word of 4 letters or more counting
    1 and a number 2 (ties: the later first)."""
    parts = sentences(text)
    weight = [len(_WORD.findall(s)) + 2 * len(_NUMBER.findall(s)) for s in parts]
    drop = set(sorted(range(len(parts)), key=lambda i: (-weight[i], -i))[:k])
    return " ".join(s for i, s in enumerate(parts) if i not in drop)


def degree_targets(pair: Preference, degrees: int) -> list[dict[str, str]]:
    """For k = 0 .. degrees (at most one fewer than the chosen response's sentences): the chosen response with k
    key sentences removed, and k to be predicted."""
    n = len(sentences(pair.chosen))
    return (
        [
            {
                "request": DEGREE_REQUEST.format(question=pair.prompt, answer=without_key_sentences(pair.chosen, k)),
                "target": str(k),
            }
            for k in range(min(degrees, n - 1) + 1)
        ]
        if n
        else []
    )
