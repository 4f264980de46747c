"""Prepare a prompt's hidden tests for the python_tests harness (see _code_harness.py).

The hidden tests arrive as Python statements (usually asserts). Before they are
sent into the sandbox, iterpo rewrites them so that a response cannot pass them
with a value built to win every comparison (an "always-equal" object):

- every comparison ``a == b``, ``a < b``, ``x in c`` ... becomes a call of the
  harness's comparison guard, which refuses to let a value of a class the
  response defined decide a comparison against a value of the tests;
- chained comparisons (``0 <= f(x) < 10``) become one guard call per pair,
  each operand evaluated once, with Python's short-circuit;
- the condition of every ``assert`` (and the operands of ``not``, ``and``,
  ``or`` and ``x if c else y`` inside it) goes through the truth guard, so a
  response object's ``__bool__`` or ``__len__`` cannot decide an assert;
- unittest-style checks (``self.assertEqual(a, b)``, ``assertTrue(x)``...)
  get the same treatment for their first arguments.

``is`` and ``is not`` stay native: identity cannot be faked.

The guards are named by placeholder string constants (``'\\x00iterpo:cmp'(...)``).
The harness swaps them for its guard functions (_code_harness_guards.py) inside
the compiled code objects, so the guards are never a name in the tests'
namespace that code holding that namespace could replace.

Each top-level statement is sent separately with the names it may bind, so the
harness can run the tests one statement at a time and notice when something
other than the tests changed the tests' namespace.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

CMP, CHAIN, TRUTH, PAIR = "\x00iterpo:cmp", "\x00iterpo:chain", "\x00iterpo:truth", "\x00iterpo:pair"
TEMP_PREFIX = "__iterpo_t"  # names of the temporaries that hold the middle operands of chained comparisons
ANY_NAME = "*"  # in a statement's bound names: `from m import *` may bind anything

_OPS = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Is: "is",
    ast.IsNot: "is not",
}
# unittest.TestCase checks whose first two arguments are compared, and those that truth-test their first
_PAIR_CHECKS = frozenset(
    {
        "assertEqual",
        "assertEquals",
        "assertNotEqual",
        "assertAlmostEqual",
        "assertNotAlmostEqual",
        "assertGreater",
        "assertGreaterEqual",
        "assertLess",
        "assertLessEqual",
        "assertIn",
        "assertNotIn",
        "assertListEqual",
        "assertTupleEqual",
        "assertSetEqual",
        "assertDictEqual",
        "assertSequenceEqual",
        "assertCountEqual",
        "assertMultiLineEqual",
    }
)
_TRUTH_CHECKS = frozenset({"assertTrue", "assertFalse"})
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)

# Standard-library modules the harness may import before the response runs (when the response or the tests
# import them): shared by both, so their types compare across them, and watched for tampering. A module
# outside this list that the response imports is dropped before the tests run; the tests import it afresh.
PRELOADABLE = frozenset(
    """
    abc array asyncio base64 binascii bisect calendar cmath collections contextlib copy copyreg csv dataclasses
    datetime decimal difflib enum fnmatch fractions functools graphlib hashlib heapq html inspect io ipaddress
    itertools json keyword logging math numbers operator os pathlib pprint queue random re reprlib shlex
    statistics string struct tempfile textwrap time traceback types typing unicodedata unittest uuid weakref zlib
""".split()
)


@dataclass(frozen=True)
class HiddenTests:
    statements: tuple[
        tuple[int, str, tuple[str, ...]], ...
    ]  # (line in the original tests, rewritten source, names bound)
    global_names: tuple[str, ...]  # names declared `global` somewhere: any statement may rebind them
    imports: tuple[str, ...]  # modules the tests import (dotted names)


def prepare(source: str) -> HiddenTests:
    """Rewrite the tests (SyntaxError when they do not parse)."""
    tree = ast.parse(source)
    statements = []
    for stmt in tree.body:
        rewritten = ast.fix_missing_locations(_Rewriter().visit(stmt))
        statements.append((stmt.lineno, ast.unparse(rewritten), tuple(sorted(_bound_names(rewritten)))))
    global_names = sorted(
        {n for node in ast.walk(tree) if isinstance(node, (ast.Global, ast.Nonlocal)) for n in node.names}
    )
    return HiddenTests(tuple(statements), tuple(global_names), tuple(sorted(_imports(tree))))


def imported_modules(code: str) -> set[str]:
    """The modules a piece of code imports by name (empty when it does not parse)."""
    try:
        return _imports(ast.parse(code))
    except (SyntaxError, ValueError):
        return set()


def preload_list(*module_sets: set[str]) -> list[str]:
    """The modules among these the harness should import first: those of PRELOADABLE."""
    return sorted({m for names in module_sets for m in names if m.partition(".")[0] in PRELOADABLE})


def _imports(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            # `from package import name`: name may be a submodule (the harness skips names that fail to import)
            found.update(f"{node.module}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def _guard(name: str, *args: ast.expr) -> ast.Call:
    return ast.Call(func=ast.Constant(name), args=list(args), keywords=[])


class _Rewriter(ast.NodeTransformer):
    """Rewrites one top-level statement; children first, so each comparison is rewritten exactly once."""

    def __init__(self):
        self.temps = 0
        self.comprehension_depth = 0

    def _visit_comprehension(self, node):
        self.comprehension_depth += 1
        try:
            return self.generic_visit(node)
        finally:
            self.comprehension_depth -= 1

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _visit_comprehension

    def visit_Compare(self, node: ast.Compare) -> ast.expr:
        self.generic_visit(node)
        ops = [_OPS[type(op)] for op in node.ops]
        operands = [node.left, *node.comparators]
        if len(ops) == 1:
            return ast.copy_location(_guard(CMP, ast.Constant(ops[0]), *operands), node)
        if self.comprehension_depth:
            # An assignment expression is not allowed in some parts of a comprehension: pass the later
            # operands as functions instead, which the guard calls in order, each once.
            thunks = [ast.Lambda(args=_no_args(), body=operand) for operand in operands[1:]]
            return ast.copy_location(
                _guard(CHAIN, ast.Tuple([ast.Constant(o) for o in ops], ast.Load()), operands[0], *thunks), node
            )
        # a < b < c  ->  cmp('<', a, (t := b)) and cmp('<', t, c): each operand evaluated once, short-circuiting
        pairs: list[ast.expr] = []
        left = operands[0]
        for i, op in enumerate(ops):
            right = operands[i + 1]
            if i < len(ops) - 1:
                self.temps += 1
                name = f"{TEMP_PREFIX}{self.temps}"
                right_value: ast.expr = ast.NamedExpr(ast.Name(name, ast.Store()), right)
                next_left: ast.expr = ast.Name(name, ast.Load())
            else:
                right_value, next_left = right, right
            pairs.append(_guard(CMP, ast.Constant(op), left, right_value))
            left = next_left
        return ast.copy_location(ast.BoolOp(ast.And(), pairs), node)

    def visit_Assert(self, node: ast.Assert) -> ast.Assert:
        self.generic_visit(node)
        node.test = _truth(node.test)
        return node

    def visit_Call(self, node: ast.Call) -> ast.Call:
        self.generic_visit(node)
        name = node.func.attr if isinstance(node.func, ast.Attribute) else None
        plain = [a for a in node.args[:2] if not isinstance(a, ast.Starred)]
        if name in _PAIR_CHECKS and len(plain) == 2 == len(node.args[:2]):
            node.args = [ast.Starred(_guard(PAIR, *plain), ast.Load()), *node.args[2:]]
        elif name in _TRUTH_CHECKS and node.args and not isinstance(node.args[0], ast.Starred):
            node.args = [_guard(TRUTH, node.args[0]), *node.args[1:]]
        return node


def _truth(node: ast.expr) -> ast.expr:
    """Route a truth-tested expression through the truth guard, looking inside not/and/or/if-else."""
    if isinstance(node, ast.BoolOp):
        return ast.copy_location(ast.BoolOp(node.op, [_truth(v) for v in node.values]), node)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ast.copy_location(ast.UnaryOp(ast.Not(), _truth(node.operand)), node)
    if isinstance(node, ast.IfExp):
        return ast.copy_location(ast.IfExp(_truth(node.test), _truth(node.body), _truth(node.orelse)), node)
    return ast.copy_location(_guard(TRUTH, node), node)


def _no_args() -> ast.arguments:
    return ast.arguments(posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[])


def _bound_names(stmt: ast.stmt) -> set[str]:
    """Names a top-level statement may bind or delete in the tests' namespace (generously: every name it stores)."""
    names = set()
    for node in ast.walk(stmt):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names.add(ANY_NAME if alias.name == "*" else alias.asname or alias.name.partition(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.add(node.rest)
    return names
