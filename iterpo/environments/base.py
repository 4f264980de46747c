"""The environment contract: tools a policy calls in the middle of its response.

A trajectory is a sequence of turns. In each turn the policy writes text; when
that text ends with a call, ``<TAG>request</TAG>`` for one of the episode's
tools, generation stops there, the tool answers, and its answer comes back as
a tool message of the chat template (the observation), after which the policy
writes its next turn. A turn without a call is the final answer. The
observation tokens are context: the policy reads them but is never trained on
them (Rollout.policy_mask).

An environment is a dataclass registered by name; its fields are its options,
given in the config beside ``name`` (``environment: {name: python, timeout: 5}``).
``call`` must never raise for bad input: a malformed request is answered with
an error message, as a real tool would answer, and the episode goes on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from iterpo.registry import Registry


@dataclass
class Environment:
    tag: ClassVar[str] = ""  # the call's tag: <tag>request</tag>
    instructions: ClassVar[str] = ""  # how to call it, added to the system prompt of every episode

    def check(self) -> None:
        """Fail early (before a run starts) when this machine cannot run the tool; default: nothing to check."""

    def call(self, request: str) -> str:  # pragma: no cover
        """The tool's answer to one request (an error message for a bad one; never raises)."""
        raise NotImplementedError

    def find_call(self, text: str) -> str | None:
        """The request of the call a turn ends with (its last complete <tag>...</tag>), or None: a final answer."""
        calls = re.findall(rf"<{self.tag}>(.*?)</{self.tag}>", text, flags=re.DOTALL)
        if not calls or not text.rstrip().endswith(f"</{self.tag}>"):
            return None
        return calls[-1].strip()

    @property
    def stop(self) -> str:
        """The string that ends a turn holding a call."""
        return f"</{self.tag}>"


ENVIRONMENTS: Registry[type[Environment]] = Registry("environment")
register_environment = ENVIRONMENTS.register


def make_environment(name: str, options: dict) -> Environment:
    """The environment ``name`` with ``options``; ConfigError names an unknown or invalid option."""
    return ENVIRONMENTS.create(name, options)
