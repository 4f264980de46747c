"""The ``code`` task: small Python functions, judged by hidden unit tests run in the sandbox.

Each problem names a function and its behaviour, with a parameter drawn at
random (an offset, a divisor, a separator...). The hidden tests are asserts on
fixed inputs, whose expected values come from a reference implementation at
generation time; the prompt shows none of them. The default judge,
``python_tests``, runs the response's last code block followed by the tests in
the sandbox.
"""

from __future__ import annotations

import random

from iterpo.tasks.base import register_task
from iterpo.tasks.generated import GeneratedTask, Item

INTS = [0, 1, 2, 7, 10, 15, 21, 30, 45, 99, 100, -3, -12]
WORDS = ["apple", "banana", "kiwi", "a", "", "level", "Mississippi", "hello world", "data science", "aAbB"]


def _spec_offset(rng):
    k = rng.randint(2, 50)
    return (
        f"add_{k}",
        f"Write a Python function `add_{k}(x)` that returns the integer x plus {k}.",
        lambda x: x + k,
        [(x,) for x in INTS[:8]],
    )


def _spec_divisible(rng):
    k = rng.randint(2, 13)
    return (
        f"divisible_by_{k}",
        f"Write a Python function `divisible_by_{k}(n)` that returns True when the integer n "
        f"is divisible by {k} and False otherwise.",
        lambda n: n % k == 0,
        [(x,) for x in INTS],
    )


def _spec_count(rng):
    c = rng.choice("aeiouns")
    return (
        f"count_{c}",
        f"Write a Python function `count_{c}(s)` that returns how many times the letter '{c}' "
        "(lower case only) appears in the string s.",
        lambda s: s.count(c),
        [(w,) for w in WORDS],
    )


def _spec_clip(rng):
    lo = rng.randint(-20, 10)
    hi = lo + rng.randint(5, 40)
    name = "clip_" + "_".join(f"m{-v}" if v < 0 else str(v) for v in (lo, hi))  # clip_m5_20: [-5, 20]
    return (
        name,
        f"Write a Python function `{name}(x)` that returns x limited to the "
        f"range [{lo}, {hi}]: {lo} if x is smaller, {hi} if x is larger, else x.",
        lambda x: max(lo, min(hi, x)),
        [(x,) for x in INTS + [lo, hi, lo - 1, hi + 1]],
    )


def _spec_repeat(rng):
    k, sep = rng.randint(2, 5), rng.choice(["-", ", ", " ", "|", "+"])
    name = f"repeat_{k}_sep{ord(sep[0])}_{len(sep)}"  # the separator, spelled in the name so names stay unique
    return (
        name,
        f"Write a Python function `{name}(w)` that returns the string w repeated {k} times, joined by {sep!r}.",
        lambda w: sep.join([w] * k),
        [(w,) for w in WORDS],
    )


def _spec_multiple(rng):
    k = rng.randint(2, 30)
    return (
        f"nth_multiple_of_{k}",
        f"Write a Python function `nth_multiple_of_{k}(n)` that returns the n-th positive "
        f"multiple of {k} (the 1st is {k}).",
        lambda n: n * k,
        [(n,) for n in (1, 2, 3, 10, 37)],
    )


def _spec_fizz(rng):
    p, q = rng.sample([2, 3, 4, 5, 7], 2)
    a, b = rng.choice(["Fizz", "Foo", "Ping"]), rng.choice(["Buzz", "Bar", "Pong"])
    name = f"{a.lower()}{b.lower()}_{p}_{q}"
    return (
        name,
        f"Write a Python function `{name}(n)` that returns '{a}{b}' if n is divisible by both {p} and {q}, "
        f"'{a}' if only by {p}, '{b}' if only by {q}, and otherwise str(n).",
        lambda n: (a + b) if n % p == 0 and n % q == 0 else a if n % p == 0 else b if n % q == 0 else str(n),
        [(n,) for n in range(1, 2 * p * q + 1)],
    )


def _spec_sum_until(rng):
    k = rng.randint(2, 9)
    return (
        f"sum_multiples_of_{k}",
        f"Write a Python function `sum_multiples_of_{k}(n)` that returns the sum of all "
        f"positive multiples of {k} that are smaller than n.",
        lambda n: sum(range(k, max(n, 0), k)),
        [(n,) for n in (0, 1, k, k + 1, 50, 101)],
    )


SPECS = [
    _spec_offset,
    _spec_divisible,
    _spec_count,
    _spec_clip,
    _spec_repeat,
    _spec_multiple,
    _spec_fizz,
    _spec_sum_until,
]


@register_task("code")
class Code(GeneratedTask):
    name = "code"
    default_judge = "python_tests"

    def make(self, rng: random.Random) -> Item:
        name, text, reference, cases = rng.choice(SPECS)(rng)
        tests = "\n".join(f"assert {name}({', '.join(map(repr, args))}) == {reference(*args)!r}" for args in cases)
        return Item((name,), text + " Reply with the function in a ```python code block.", tests)
