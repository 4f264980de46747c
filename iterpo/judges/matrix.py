"""The matrix-game judge: P(y_i beats y_j) read from a preference matrix, for the tabular policy.

With the tabular policy (iterpo.models.tabular) and this judge, ``iterpo run``
plays the preference game that ``iterpo games`` solves in closed form, through
the same stages as a language model: the check that the loop implements the
published updates. Responses are the tabular policy's 'y0' .. 'y{N-1}'; the
matrix is one game for every prompt (N, N), or one per context (C, N, N), the
prompt 'c{k}' playing game k. A pairwise judge: its win rates weigh each
opponent by its probability when sampling lists every response
(sampling.exhaustive).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from iterpo.errors import DataError, JudgeFailure
from iterpo.games.core import read_game
from iterpo.judges.base import register_judge
from iterpo.judges.pairwise import PairwiseJudge
from iterpo.records import Prompt

_RESPONSE = re.compile(r"\s*y(\d+)\s*")
_CONTEXT = re.compile(r"\s*c(\d+)\s*")


@register_judge("matrix")
@dataclass
class MatrixJudge(PairwiseJudge):
    path: str = ""
    """The game: a .npy file, or a text/CSV file of rows, P[i, j] = P(y_i beats y_j), P + P^T = 1."""
    digest: str = field(default="", init=False)  # the file's content hash: cached verdicts follow the matrix

    def __post_init__(self):
        super().__post_init__()
        if not self.path:
            raise ValueError("option path must name the preference matrix file")
        self._P = read_game(self.path)  # DataError naming the file when it is not a game
        if self._P.ndim not in (2, 3):
            raise ValueError(f"{self.path}: the matrix must be (N, N) or (contexts, N, N), got {self._P.shape}")
        self.digest = hashlib.sha256(Path(self.path).read_bytes()).hexdigest()[:16]

    def _game(self, prompt: Prompt):
        if self._P.ndim == 2:
            return self._P
        m = _CONTEXT.fullmatch(prompt.text)
        if m is None or int(m.group(1)) >= self._P.shape[0]:
            raise JudgeFailure(
                f"prompt {prompt.text!r} names none of the {self._P.shape[0]} games (c0 .. c{self._P.shape[0] - 1})"
            )
        return self._P[int(m.group(1))]

    def _index(self, text: str, n: int) -> int:
        m = _RESPONSE.fullmatch(text)
        if m is None or int(m.group(1)) >= n:
            raise JudgeFailure(f"response {text[:40]!r} is none of the game's responses y0 .. y{n - 1}")
        return int(m.group(1))

    def check_prompt(self, prompt: Prompt) -> None:
        try:
            self._game(prompt)
        except JudgeFailure as exc:
            raise DataError(str(exc)) from None

    def ask(self, prompt, pairs):
        try:
            P = self._game(prompt)
        except JudgeFailure as exc:
            return [(None, str(exc))] * len(pairs)
        out: list[tuple[float | None, str]] = []
        for a, b in pairs:
            try:
                i, j = self._index(a, P.shape[-1]), self._index(b, P.shape[-1])
            except JudgeFailure as exc:
                out.append((None, str(exc)))
                continue
            out.append((float(P[i, j]), f"P[{i}, {j}]"))
        return out
