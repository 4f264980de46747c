"""retrieval: BM25 search (the bm25s library) over a local document collection.

The default collection is iterpo.tasks.corpus (fictional towns, generated, so
the retrieval task's answers must be looked up); ``corpus`` names a JSONL file
of your own documents instead, one {"text": ...} (optionally "title") a line.
The index is built once per process, on first use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iterpo.environments.base import Environment, register_environment
from iterpo.errors import DataError


@register_environment("retrieval")
@dataclass
class Retrieval(Environment):
    """BM25 search over the bundled town collection or a JSONL file of documents."""

    tag = "search"
    instructions = (
        "You can search a document collection. Write <search>QUERY</search>, for example "
        "<search>founding year of Velmora</search>, and the best matching documents come back to you. Then give "
        "the final answer."
    )

    top_k: int = 2
    """Documents returned per search."""
    corpus: str | None = None
    """A JSONL file of documents ({"text": ..., "title": ...} a line); null: the bundled town collection."""
    max_chars: int = 800
    """The answer keeps at most this many characters."""
    _index: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.top_k < 1 or self.max_chars < 32:
            raise ValueError("top_k must be at least 1 and max_chars at least 32")

    def check(self) -> None:
        self._documents()  # a missing or malformed corpus file fails before the run starts

    def _documents(self) -> list[str]:
        if self.corpus is None:
            from iterpo.tasks.corpus import documents

            return documents()
        path = Path(self.corpus)
        if not path.is_file():
            raise DataError(f"environment.corpus: {path} is not a file")
        docs = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"environment.corpus: {path} line {n} is not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
                raise DataError(f"environment.corpus: {path} line {n} needs a non-empty 'text' string")
            title = row.get("title")
            docs.append(f"{title}: {row['text']}" if isinstance(title, str) and title else row["text"])
        if not docs:
            raise DataError(f"environment.corpus: {path} holds no documents")
        return docs

    def _search(self):
        if self._index is None:
            import bm25s

            docs = self._documents()
            index = bm25s.BM25()
            index.index(bm25s.tokenize(docs, stopwords="en", show_progress=False), show_progress=False)
            self._index = (index, docs)
        return self._index

    def call(self, request: str) -> str:
        import bm25s

        query = request.strip()[:500]
        if not query:
            return "error: empty query"
        index, docs = self._search()
        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not tokens.ids[0]:
            return "no documents match"
        k = min(self.top_k, len(docs))
        found, scores = index.retrieve(tokens, k=k, show_progress=False)
        hits = [docs[int(i)] for i, s in zip(found[0], scores[0]) if s > 0]
        text = "\n".join(hits) if hits else "no documents match"
        return text[: self.max_chars]
