"""Tools a policy calls inside its response (a registry, like judges), and episodes that use them."""

from iterpo.environments import calculator, python_tool, retrieval  # noqa: F401  (register the environments)
from iterpo.environments.base import ENVIRONMENTS, Environment, make_environment, register_environment

__all__ = ["ENVIRONMENTS", "Environment", "make_environment", "register_environment"]
