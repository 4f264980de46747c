"""eval: greedy accuracy of the policy after the round on the held-out prompts, and on the first eval.shifted of
the task's shifted prompts, by the eval judge."""

from __future__ import annotations

from dataclasses import dataclass

from iterpo.progress import bar
from iterpo.stages.analyses import analyse
from iterpo.stages.base import Stage, register_stage
from iterpo.stages.sample import as_rollout, episodes_of, greedy


def item_of(ctx, prompt, response) -> dict:
    """A held-out prompt's line in eval.json: the greedy response and the eval judge's verdict on it."""
    j = ctx.plan.eval_judge.judge(prompt, [response])[0]
    item = {"prompt_id": prompt.prompt_id, "response": response.text, "score": j.score, "detail": j.detail}
    if response.reasoning is not None:
        item["reasoning"] = response.reasoning
    if response.transcript is not None:
        item["transcript"] = response.transcript
        item["tool_calls"] = len(response.observations)
    return item


@register_stage("eval")
@dataclass
class Evaluate(Stage):
    """One greedy response per held-out prompt, scored by a verifier; round 0 evaluates the starting model.
    With eval.shifted, the same on the task's shifted prompts (phrasings or instances never trained on), in the
    same decode batches. With eval.analyses, also the round's analyses (iterpo.stages.analyses). Derived rounds
    skip it when the task has no held-out prompts."""

    writes = {"eval": "eval.json"}

    def needed(self, plan) -> bool:
        return bool(plan.eval_prompts)

    def run(self, ctx, r):
        e, prompts = ctx.config.eval, ctx.eval_prompts
        if r % e.every and r != ctx.config.run.rounds:  # eval.every: not this round
            ctx.store.write_json(ctx.store.path(r, self.file("eval")), {"round": r, "accuracy": None, "skipped": True})
            return {"skipped": True}
        shifted = ctx.plan.task.shifted_prompts()[: e.shifted]
        asked = prompts + shifted  # one set of decode batches: a greedy answer does not depend on its batch
        with ctx.sampler(r) as sampler:
            with bar("evaluation", len(asked)) as advance:
                if ctx.plan.environment is None:
                    responses = greedy(ctx, sampler, asked, r, "policy", advance)
                else:  # greedy episodes with the tool
                    played = episodes_of(
                        ctx, sampler, asked, None, e.max_new_tokens, ctx.config.sampling.batch_size, advance
                    )
                    responses = [as_rollout(ctx, ep, p.prompt_id, 0, r, 0, "policy") for p, [ep] in zip(asked, played)]
            items = [item_of(ctx, p, response) for p, response in zip(asked, responses)]
            items, shifted_items = items[: len(prompts)], items[len(prompts) :]
            responses = responses[: len(prompts)]
            scores = [x["score"] for x in items]
            found = analyse(ctx, r, sampler, prompts, responses, scores) if e.analyses else None
        accuracy = sum(scores) / len(scores)
        result = {"round": r, "accuracy": accuracy, "n": len(items), "items": items}
        if shifted_items:
            result["shifted_accuracy"] = sum(x["score"] for x in shifted_items) / len(shifted_items)
            result["shifted_items"] = shifted_items
        if found is not None:
            result["analyses"] = found
        ctx.store.write_json(ctx.store.path(r, self.file("eval")), result)
        return {"accuracy": accuracy, "shifted_accuracy": result.get("shifted_accuracy")}
