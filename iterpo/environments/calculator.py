"""calculator: exact arithmetic on integers and decimals, evaluated from the expression's syntax tree.

Nothing is executed: the request is parsed as a Python expression and only
numbers, + - * / // % **, unary signs and parentheses are evaluated (with
Decimal for non-integers), with bounds on exponents and on the size of every
intermediate result, so no request can take long or use much memory.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, DivisionByZero, InvalidOperation, localcontext
from typing import Any

from iterpo.environments.base import Environment, register_environment

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


class _Refused(ValueError):
    pass


@register_environment("calculator")
@dataclass
class Calculator(Environment):
    """Exact arithmetic on integers and decimals; anything else is refused with a message."""

    tag = "calc"
    instructions = (
        "You have a calculator. To compute something, write <calc>EXPRESSION</calc>, for example "
        "<calc>1234 * 5678</calc>, and the result comes back to you. Then give the final answer."
    )

    max_digits: int = 200
    """Largest number of digits of any number in the calculation; a larger one is refused."""

    def __post_init__(self):
        if self.max_digits < 1:
            raise ValueError(f"max_digits must be at least 1, got {self.max_digits}")

    def call(self, request: str) -> str:
        expression = request.replace(",", "").replace("×", "*").replace("^", "**").strip().rstrip("=").strip()
        if not expression:
            return "error: empty expression"
        if len(expression) > 10 * self.max_digits:
            return "error: expression too long"
        try:
            value = self._eval(ast.parse(expression, mode="eval").body)
        except SyntaxError:
            return f"error: not an arithmetic expression: {request.strip()[:80]}"
        except _Refused as exc:
            return f"error: {exc}"
        except (ZeroDivisionError, DivisionByZero):
            return "error: division by zero"
        except (InvalidOperation, OverflowError, RecursionError):
            return "error: the result is too large or undefined"
        return _show(value)

    def _eval(self, node: ast.AST) -> int | Decimal:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return self._bounded(node.value if isinstance(node.value, int) else Decimal(repr(node.value)))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
            value = self._eval(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self._eval(node.left), self._eval(node.right)
            if isinstance(node.op, ast.Pow) and (abs(int(right)) > 64 or right != int(right)):
                raise _Refused("exponents must be whole numbers up to 64")
            if isinstance(node.op, ast.Div) or isinstance(left, Decimal) or isinstance(right, Decimal):
                with localcontext() as ctx:
                    ctx.prec = self.max_digits + 10
                    ctx.traps[DivisionByZero] = True
                    result = _BINARY[type(node.op)](Decimal(left), Decimal(right))
                    if isinstance(node.op, ast.Div) and result == result.to_integral_value():
                        result = Decimal(int(result))
            else:
                if isinstance(node.op, ast.Pow) and right < 0:
                    return self._bounded(Decimal(left) ** int(right))
                result = _BINARY[type(node.op)](left, right)
            return self._bounded(result)
        raise _Refused(f"only numbers, + - * / // % ** and parentheses are allowed, not {type(node).__name__}")

    def _bounded(self, value: int | Decimal) -> int | Decimal:
        digits = len(str(abs(int(value)))) if isinstance(value, int) or value.is_finite() else 0
        if digits > self.max_digits:
            raise _Refused(f"a number has more than {self.max_digits} digits")
        return value


def _show(value: int | Decimal) -> str:
    if isinstance(value, int):
        return str(value)
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")
