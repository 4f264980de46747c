"""A stage from outside iterpo, registered like any plugin (ITERPO_PLUGINS=plugin_stage): one decorated class."""

import json
from dataclasses import dataclass

from iterpo.progress import bar
from iterpo.records import Rollout
from iterpo.stages import Stage, register_stage


@register_stage("word_counts")
@dataclass
class WordCounts(Stage):
    """How many words each response of the round has, by prompt; optionally only responses of a source."""

    reads = ("rollouts",)
    writes = {"word_counts": "word_counts.json"}
    min_words: int = 0
    """Responses shorter than this are left out."""

    def run(self, ctx, r):
        counts: dict[str, list[int]] = {}
        rollouts = ctx.read(r, self.file("rollouts"), Rollout)
        with bar("counting words", len(rollouts)) as advance:
            for x in rollouts:
                n = len(x.text.split())
                if n >= self.min_words:
                    counts.setdefault(x.prompt_id, []).append(n)
                advance(1)
        ctx.store.write_json(ctx.store.path(r, self.file("word_counts")), counts)
        return {"responses": sum(map(len, counts.values())), "source_file": self.file("rollouts")}


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(sorted(WordCounts.writes)))
