"""Episodes: the policy's turns and a tool's answers, as one response of token ids with a mask of whose each
token is.

All the episodes of a batch advance turn by turn: each turn, the contexts of
the episodes still running (prompt + everything so far) are generated together,
each with its own seed derived from (the sample's seed, the turn), so an
episode depends on its seed alone and a resumed run redraws it token for token.
A turn that ends with a call gets the tool's answer as a tool message of the
chat template; a turn without one is the final answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from iterpo.environments.base import Environment
from iterpo.models.chat import encode_observation
from iterpo.sampling import derive_seed


@dataclass
class Limits:
    max_turns: int  # policy turns, the last of them the final answer
    max_tokens: int  # the episode's tokens: the policy's and the observations'
    max_new_tokens: int  # per turn
    max_observation_tokens: int


@dataclass
class Episode:
    token_ids: list[int] = field(default_factory=list)  # (T,) every turn's and observation's tokens, in order
    policy_mask: list[bool] = field(default_factory=list)  # (T,) True on the policy's tokens
    step_ends: list[int] = field(default_factory=list)  # token offset where each policy turn ends
    turns: list[str] = field(default_factory=list)  # the policy's turns as text
    observations: list[str] = field(default_factory=list)  # the tool's answers, one per call
    finish_reason: str = ""  # "stop" (final answer), "length" (budget or turn length), "turns" (turn limit)

    @property
    def final(self) -> str:
        """The final answer: the last turn's text (a call, when the episode ended before answering)."""
        return self.turns[-1] if self.turns else ""

    def transcript(self) -> str:
        """Turns and answers as one text, each answer as <result>...</result> after its call."""
        parts = []
        for n, turn in enumerate(self.turns):
            parts.append(turn)
            if n < len(self.observations):
                parts.append(f"<result>{self.observations[n]}</result>")
        return "\n".join(parts)


def take_turn(
    ep: Episode, ids: list[int], reason: str, env: Environment, tokenizer, limits: Limits, left: int, last: bool
) -> bool:
    """Add one policy turn (ids, as the sampler ended it: "stop" or "length") to ep, and the tool's answer when the
    turn ends with a call; ``left``: the episode's tokens left before the turn; ``last``: no turn may follow.
    True while the episode goes on; else ep.finish_reason says why it ended."""
    if len(ids) > left:  # the episode's budget ends inside this turn
        ids, reason = ids[:left], "length"
    text = tokenizer.decode(ids, skip_special_tokens=True)
    ep.token_ids += ids
    ep.policy_mask += [True] * len(ids)
    ep.step_ends.append(len(ep.token_ids))
    ep.turns.append(text)
    call = env.find_call(text) if reason == "stop" and ids and ids[-1] != tokenizer.eos_token_id else None
    if call is None:
        ep.finish_reason = reason
        return False
    if last:
        ep.finish_reason = "turns"
        return False
    answer = env.call(call)
    content = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if len(content) > limits.max_observation_tokens:
        answer = tokenizer.decode(content[: limits.max_observation_tokens]) + " ..."
    obs = encode_observation(tokenizer, answer)  # the template's tokens around the answer
    if len(ids) + len(obs) >= left:  # no room left for a turn after it
        ep.finish_reason = "length"
        return False
    ep.observations.append(answer)
    ep.token_ids += obs
    ep.policy_mask += [False] * len(obs)
    return True


def run_episodes(
    sampler,
    tokenizer,
    env: Environment,
    limits: Limits | list[Limits],
    prompts: list[list[int]],
    seeds: list[list[int]] | None,
    temperature: float,
    top_p: float,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> list[list[Episode]]:
    """Per prompt, one episode per seed (seeds None: one greedy episode per prompt); ``limits``: the same for every
    prompt, or one per prompt (episodes that go on from different points: a tree search's nodes). Every turn writes
    at most the first prompt's ``max_new_tokens``."""
    per_prompt = len(seeds[0]) if seeds is not None else 1
    each = limits if isinstance(limits, list) else [limits] * len(prompts)
    episodes = [[Episode() for _ in range(per_prompt)] for _ in prompts]
    running = [(i, k) for i in range(len(prompts)) for k in range(per_prompt)]
    for turn in range(max((x.max_turns for x in each), default=0)):
        if not running:
            break
        left = {ik: each[ik[0]].max_tokens - len(episodes[ik[0]][ik[1]].token_ids) for ik in running}
        turn_seeds = [[derive_seed(seeds[i][k], "turn", turn)] for i, k in running] if seeds is not None else None
        outs = sampler.generate(
            [prompts[i] + episodes[i][k].token_ids for i, k in running],
            turn_seeds,
            temperature,
            top_p,
            min(each[0].max_new_tokens, max(left.values())),
            batch_size,
            stop=[env.stop],
        )
        still = []
        for (i, k), [(ids, reason)] in zip(running, outs):
            ep = episodes[i][k]
            if take_turn(ep, ids, reason, env, tokenizer, each[i], left[(i, k)], turn == each[i].max_turns - 1):
                still.append((i, k))
            elif progress is not None:
                progress(1)
        running = still  # in the last turn every episode finishes: a call there ends it with "turns"
    return episodes
