"""A judge for tests, registered like any plugin (ITERPO_PLUGINS=toy_judges)."""

from iterpo.judges import Judge, register_judge
from iterpo.records import Judgement


@register_judge("first_token_parity")
class FirstTokenParity(Judge):
    """A response is 'correct' when its first token id is even.

    A random tiny model never solves arithmetic, but this splits its samples
    about half and half, so pairing and training have data.
    """

    name = "first_token_parity"

    def judge(self, prompt, rollouts):
        return [Judgement(r.prompt_id, r.sample_idx, self.name, float(r.token_ids[0] % 2 == 0), "") for r in rollouts]


@register_judge("token_sum")
class TokenSum(Judge):
    """A graded score in {0, 0.25, ..., 1} read off the response's tokens: varied scores from a random model."""

    name = "token_sum"

    def judge(self, prompt, rollouts):
        return [Judgement(r.prompt_id, r.sample_idx, self.name, (sum(r.token_ids) % 5) / 4, "") for r in rollouts]


@register_judge("text_length")
class TextLength(Judge):
    """A graded score read off the text judges read (its length mod 5, over 4); the detail repeats that text."""

    name = "text_length"

    def judge(self, prompt, rollouts):
        return [Judgement(r.prompt_id, r.sample_idx, self.name, (len(r.text) % 5) / 4, r.text) for r in rollouts]


@register_judge("token_sum_failing")
class TokenSumFailing(TokenSum):
    """token_sum, but every response whose first token id is a multiple of 3 gets a failed verdict."""

    name = "token_sum_failing"

    def judge(self, prompt, rollouts):
        return [
            Judgement(j.prompt_id, j.sample_idx, self.name, j.score, "no score in the reply", failed=True)
            if r.token_ids[0] % 3 == 0
            else j
            for r, j in zip(rollouts, super().judge(prompt, rollouts))
        ]


from dataclasses import dataclass  # noqa: E402

from iterpo.environments import Environment, register_environment  # noqa: E402


@register_environment("toy_echo")
@dataclass
class ToyEcho(Environment):
    """A tool a random tiny model calls often: a turn ends at any token holding an 'e' and is a call; the answer
    names the call's length. Multi-turn episodes, observations and turn limits, without a trained model."""

    tag = "echo"
    instructions = "Turns ending in e are calls."

    @property
    def stop(self) -> str:
        return "e"

    def find_call(self, text):
        return text if "e" in text[-8:] else None

    def call(self, request):
        return f"heard {len(request)} characters"


@register_judge("parity_verifier")
class ParityVerifier(FirstTokenParity):
    """first_token_parity declared a verifier: held-out accuracy and held-out pairs of a random tiny model that
    are not all wrong."""

    name = "parity_verifier"
    verifier = True
