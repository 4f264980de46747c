"""Guards that run with the hidden tests, inside the sandbox (see _code_harness.py).

The harness executes this file in a namespace of its own, before any response
code runs, after defining:

- PREEXISTING_CLASSES: {id: class} of every class that existed before the response ran;
- SAVED_MODULES: {name: (module, live dict, copy of the dict)} of the modules loaded by then;
- MODULE_NAME and OWN_MODULES: the response's module name, and the modules never copied for the tests.

What is defined here can be reached from the response's side (sys._getframe
is replaced by fake_getframe; the tests call compare, truth...), so none of it
may lead to the harness: it holds its own copy of the builtins and of
everything it needs, and no reference to the harness's namespace.

The rewritten tests (see iterpo.judges._hidden_tests) call compare, compare_chain,
truth and pair. Their rule: a value whose class the response made may not
decide a comparison, a membership test or an assert's truth against a value of
the tests. Two values of the response's classes may be compared (a test of a
user class needs its __eq__); `is` is never touched.
"""

import _operator
import collections
import types

if "PREEXISTING_CLASSES" not in globals():
    raise ImportError("_code_harness_guards runs inside the sandbox, executed by the harness; it is not imported")

SimpleNamespace, ModuleType, MemberDescriptorType = types.SimpleNamespace, types.ModuleType, types.MemberDescriptorType
mro_of = type.__dict__["__mro__"].__get__  # the real MRO, whatever a metaclass claims
dict_of = type.__dict__["__dict__"].__get__  # the real class dict
flags_of = type.__dict__["__flags__"].__get__
HEAPTYPE = 1 << 9  # classes written in Python
SCALARS = (int, float, complex, bool, str, bytes, type(None))
CONTAINERS = (tuple, list, dict, set, frozenset)
# built-in types whose comparisons look at their items: the guards look at the items too
ITERATED = CONTAINERS + (collections.deque,) + tuple(type(view) for view in ({}.keys(), {}.values(), {}.items()))
# dunders a class may define and stay "transparent" (see response_class_deciding): none takes part in comparing
# or truth-testing its instances
INERT_DUNDERS = frozenset(
    {
        "__module__",
        "__qualname__",
        "__doc__",
        "__slots__",
        "__dict__",
        "__weakref__",
        "__new__",
        "__init__",
        "__repr__",
        "__str__",
        "__format__",
        "__getnewargs__",
        "__match_args__",
        "__annotations__",
        "__orig_bases__",
        "__replace__",
        "__parameters__",
        "__firstlineno__",
        "__static_attributes__",
        "__reduce__",
        "__reduce_ex__",
        "__copy__",
        "__deepcopy__",
        "__init_subclass__",
        "__class_getitem__",
        "__annotate__",
        "__type_params__",
    }
)
OPERATORS = {
    "==": _operator.eq,
    "!=": _operator.ne,
    "<": _operator.lt,
    "<=": _operator.le,
    ">": _operator.gt,
    ">=": _operator.ge,
}
CONTAINS = _operator.contains
REAL_IMPORT = __import__
REJECTED = []  # why the guards refused, read by the harness after each test statement
COPIES = {}  # module name -> the tests' pristine copy


def permissive(cls):
    """Standard-library classes built to equal anything (unittest.mock.ANY, mocks) count as the response's."""
    return vars(cls).get("__module__") == "unittest.mock"


PREEXISTING = frozenset(key for key, cls in PREEXISTING_CLASSES.items() if not permissive(cls))


class RejectedComparison(BaseException):
    """Raised through the tests (BaseException: an `except Exception` in a test does not swallow it)."""


def reject(message):
    REJECTED.append(message)
    raise RejectedComparison(message)


def response_class_deciding(cls):
    """The class if its instances, made by the response, could decide a comparison or a truth test; else None.

    A class that existed before the response ran is never one. A class made since (by the response, or for it
    by namedtuple, dataclass...) is one unless it is a plain subclass of tuple, list, dict, set or frozenset
    whose own dunders are all inert: then the built-in compares its items, and those are checked in turn.
    """
    if id(cls) in PREEXISTING:
        return None
    mro = mro_of(cls)
    older = [c for c in mro if id(c) in PREEXISTING]
    if len(older) != 2 or older[1] is not object or not any(older[0] is c for c in CONTAINERS):
        return cls
    for c in mro:
        if id(c) not in PREEXISTING:
            for name in dict_of(c):
                if type(name) is not str or (name[:2] == "__" and name not in INERT_DUNDERS):
                    return cls
    return None


def find_response_value(value):
    """A response class that decides comparisons, found in value or in what it holds; else None."""
    stack, seen, budget = [value], set(), 1_000_000
    while stack:
        budget -= 1
        if budget < 0:
            return type(value)  # too big to inspect: treated as the response's
        x = stack.pop()
        cls = type(x)
        if any(cls is s for s in SCALARS):
            continue
        found = response_class_deciding(cls)
        if found is not None:
            return found
        base = next((c for c in mro_of(cls) for b in ITERATED if c is b), None)
        if base is not None:
            if id(x) in seen:
                continue
            seen.add(id(x))
            if base is dict:
                stack.extend(dict.keys(x))
                stack.extend(dict.values(x))
            else:
                stack.extend(base.__iter__(x))
        elif cls is slice:
            stack.extend((x.start, x.stop, x.step))
        elif (flags_of(cls) & HEAPTYPE or cls is SimpleNamespace) and not any(c is type for c in mro_of(cls)):
            # a standard-library object (Fraction, SimpleNamespace...): its comparison may look at what it
            # holds, which the response may have filled
            try:
                stack.extend(dict.values(object.__getattribute__(x, "__dict__")))
            except (AttributeError, TypeError):
                pass
            for c in mro_of(cls):
                for member in dict.values(dict(dict_of(c))):
                    if type(member) is MemberDescriptorType:  # a __slots__ entry
                        try:
                            stack.append(member.__get__(x, cls))
                        except AttributeError:
                            pass
    return None


def refuse_mixed(left, right, what):
    mine, theirs = find_response_value(left), find_response_value(right)
    if (mine is None) != (theirs is None):
        cls = mine if mine is not None else theirs
        reject(f"{what} between an object of class {cls.__name__} (made by the response) and a value of the tests")


def compare(op, left, right):
    """`left op right` for the rewritten tests, refused when exactly one side holds a response value."""
    if op == "is":
        return left is right
    if op == "is not":
        return left is not right
    refuse_mixed(left, right, f"`{op}`")
    if op == "in":
        return CONTAINS(right, left)
    if op == "not in":
        return not CONTAINS(right, left)
    return OPERATORS[op](left, right)


def compare_chain(ops, left, *rights):
    """A chained comparison whose later operands come as functions: called in order, each once."""
    result = True
    for op, thunk in zip(ops, rights):
        right = thunk()
        result = compare(op, left, right)
        if not result:
            return result
        left = right
    return result


def truth(value):
    cls = response_class_deciding(type(value))
    if cls is not None:
        reject(f"the truth value of an object of class {cls.__name__} (made by the response) decided an assert")
    return value


def pair(first, second):
    """unittest's assertEqual(first, second) & co: the rule of compare, then the arguments unchanged."""
    refuse_mixed(first, second, "a unittest check")
    return first, second


def pristine_copy(name):
    """A fresh module object holding the attributes the module had before the response ran."""
    copy = COPIES.get(name)
    if copy is None:
        copy = ModuleType(name)
        dict.update(vars(copy), SAVED_MODULES[name][2])
        COPIES[name] = copy
    return copy


def test_import(name, globals=None, locals=None, fromlist=(), level=0):
    """The tests' __import__: modules loaded before the response ran come as pristine copies."""
    module = REAL_IMPORT(name, globals, locals, fromlist, level)
    if level == 0 and type(name) is str:
        key = name if fromlist else name.partition(".")[0]
        if key in SAVED_MODULES and key not in OWN_MODULES and SAVED_MODULES[key][2] is not None:
            return pristine_copy(key)
    return module


def no_frames(*args, **kwargs):
    raise PermissionError("blocked by the iterpo sandbox: frame introspection (sys._getframe gives a stand-in)")


def no_processes(*args, **kwargs):
    raise PermissionError("blocked by the iterpo sandbox: starting a process")


class BlockedFrameLocals:
    """The f_locals of the frame stand-in: any look inside says why."""

    __getitem__ = __iter__ = __len__ = __contains__ = get = keys = items = values = no_frames


def fake_getframe(depth=0):
    """Stands in for sys._getframe: real frames lead into the harness. It names the response's module, which
    is all that namedtuple, TypeVar, Enum's functional API and logging ask of it."""
    code = SimpleNamespace(co_filename=MODULE_NAME + ".py", co_name="<module>", co_firstlineno=0)
    return SimpleNamespace(
        f_globals={"__name__": MODULE_NAME}, f_locals=BlockedFrameLocals(), f_back=None, f_lineno=0, f_code=code
    )
