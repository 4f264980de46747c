"""Responses that reason before they answer ("<think> ... </think> the answer"): where the reasoning ends.

Judges read the answer alone, so a response is split once, when it is made:
its text becomes the answer after the end marker, the reasoning is kept beside
it, and the count of leading tokens that are reasoning lets training treat
them as context (masked thinking, as PRefLexOR does, Buehler 2024,
"Preference-based Recursive Language Modeling for Exploratory Optimization of
Reasoning and Agentic Thinking").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Split:
    answer: str  # what judges read
    reasoning: str | None  # the reasoning, markers included; None: the response has none
    reasoning_tokens: int  # leading tokens that are reasoning (through the end marker)


def split_reasoning(decode, ids: list[int], end: str, start: str | None) -> Split:
    """Split a response's tokens at the end marker. decode(ids) -> text. A response without the marker is all
    answer, unless it opened ``start`` and never closed it: then it is all reasoning, and its answer empty."""
    text = decode(ids)
    at = text.find(end)
    if at < 0:
        if start is not None and start in text:
            return Split("", text, len(ids))
        return Split(text, None, 0)
    # the fewest leading tokens whose text holds the marker: 'holds the marker' only turns true as tokens are
    # added (a prefix's text is a prefix of the whole, up to the last token's bytes), so a binary search finds it
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if end in decode(ids[:mid]):
            hi = mid
        else:
            lo = mid + 1
    return Split(text[at + len(end) :].strip(), text[: at + len(end)], lo)
