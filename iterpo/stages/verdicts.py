"""A judge asked from inside a stage that needs verdicts as it goes (a tree search's values, which answers a
refinement revises): through the run's cache, failures counted, an outage stopping the stage."""

from __future__ import annotations

import dataclasses

from iterpo.errors import JudgeFailure
from iterpo.judges.base import judge_with_cache
from iterpo.records import Judgement, Prompt, Rollout


class Verdicts:
    """Judges (set up for the round) asked through cache on behalf of the stage called ``what``."""

    def __init__(self, cache, what: str):
        self.cache, self.what = cache, what
        self.asked = self.failed = 0

    def __call__(self, judge, prompt: Prompt, rollouts: list[Rollout]) -> list[Judgement]:
        """judge's verdicts on rollouts of prompt, in order (rollouts need not have distinct sample indices); a
        judge that stops answering stops the stage (every verdict obtained is kept in the cache)."""
        numbered = [dataclasses.replace(ro, sample_idx=k) for k, ro in enumerate(rollouts)]  # distinct in one call
        out = judge_with_cache(judge, prompt, numbered, self.cache)
        self.asked += len(out)
        self.failed += sum(j.failed for j in out)
        if judge.outage():
            self.cache.flush()
            raise JudgeFailure(
                f"judge {judge.name} stopped answering during the {self.what}: {judge.outage()}. The "
                "finished shards and every verdict obtained are saved; a resume does the rest again"
            )
        return out

    def check_failures(self, share: float, consequence: str) -> None:
        """JudgeFailure, before a shard is written, when more than share of the verdicts so far failed."""
        if self.asked and self.failed > share * self.asked:
            self.cache.flush()
            raise JudgeFailure(
                f"{self.what}: {self.failed} of {self.asked} verdicts failed, above judge.max_failed_share "
                f"{share:g}; {consequence}. Fix the judge, or raise judge.max_failed_share to go on"
            )
