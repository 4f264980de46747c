"""The python_tests harness: runs one response against its hidden tests, inside the sandbox.

iterpo (iterpo.judges.code) runs this file in the sandbox under a bare
interpreter (``python -I -S``), so it uses the standard library only. The job
arrives on stdin: a nonce, the response's code, the hidden tests (rewritten by
iterpo.judges._hidden_tests) and modules to import first; stdin is read to the
end and replaced by /dev/null before any response code runs. The verdict
leaves on file descriptor 3 as one line, ``iterpo-result NONCE pass|fail
DETAIL``; exit status and stdout mean nothing.

Why a nonce: response code runs in this process and may end it at any moment
(sys.exit, os._exit, an atexit hook, a destructor...). A pass is a line
carrying the nonce, which exists only in this harness's memory (not in a file,
argv or the environment): it means the harness reached its end, after every
hidden test ran and passed.

Keeping the nonce out of reach. Two threads:

- the main thread holds the nonce and decides. It never runs response code:
  it hands each phase to the worker, waits, then compares the process's state
  with a snapshot by identity only. The garbage collector is off while it
  works (a collection could run a response destructor here), SIGINT is
  ignored, and Python signal handlers can only be installed from the main
  thread, so none of the response's ever run here;
- the worker runs the response's top-level code, then the tests. Once it is
  started, RLIMIT_NPROC drops to 1: no other thread or process can be created.

A PEP 578 audit hook, installed before response code runs, blocks what a
solution never needs and an attack does: frames (sys._getframe, tracebacks'
tb_frame, generators' gi_frame...), tracing, profiling and further audit
hooks, gc.get_objects/get_referrers/get_referents, ctypes, hand-made code
objects (code.__new__, marshal.loads), starting processes, opening /proc and
/dev/fd, and changing the functions (and special attributes of the classes)
of modules loaded beforehand. A blocked action raises PermissionError and fails
the response even if it catches it. sys._getframe becomes a stand-in (see
_code_harness_guards.py).

After each phase the main thread checks that nothing was tampered with: no
thread left, builtins, every module and class loaded beforehand unchanged,
the import system's lists unchanged. Modules the response imported itself are
dropped before the tests, which import them afresh. The tests run in their own
namespace: the response's names minus its shadows of builtins, a pristine copy
of the builtins and of the modules they import; their comparisons go through
the guards.

Everything used after response code starts is captured below first: the
response may rebind os.write or builtins.len, never these names.
"""

import _signal
import _thread
import builtins
import gc
import marshal
import os
import resource
import sys
import types
import warnings

# Functions defined from here on look builtins up in this private copy, not in the shared builtins module.
__builtins__ = dict(vars(builtins))

PROTOCOL = 1
RESULT_FD = 3
MODULE_NAME = "solution"  # the response runs as this module: code under `if __name__ == "__main__":` does not run
MAX_DETAIL = 300
MISSING = object()
OWN_MODULES = (
    MODULE_NAME,
    "__main__",
    "sys",
    "builtins",
)  # never copied for the tests, nor compared attribute by attribute

os_write, os_exit, os_read, os_open, os_dup2, os_close = os.write, os._exit, os.read, os.open, os.dup2, os.close
os_lstat, os_stat, os_readlink, os_getcwd, O_RDONLY = os.lstat, os.stat, os.readlink, os.getcwd, os.O_RDONLY
gc_enable, gc_disable, gc_collect, gc_get_debug, gc_isenabled = (
    gc.enable,
    gc.disable,
    gc.collect,
    gc.get_debug,
    gc.isenabled,
)
real_getframe = sys._getframe  # for the audit hook only: sys._getframe becomes a stand-in
thread_count, start_thread, new_lock, thread_id = (
    _thread._count,
    _thread.start_new_thread,
    _thread.allocate_lock,
    _thread.get_ident,
)
FunctionType, CodeType, ModuleType, SimpleNamespace = (
    types.FunctionType,
    types.CodeType,
    types.ModuleType,
    types.SimpleNamespace,
)
dict_of = type.__dict__["__dict__"].__get__  # the real class dict, whatever a metaclass claims
flags_of = type.__dict__["__flags__"].__get__
IMMUTABLETYPE = 1 << 8  # built-in types: their attributes cannot be set at all
HARNESS_MODULE = sys.modules["__main__"]  # kept alive: this module's functions run until the end
SCALARS = (int, float, complex, bool, str, bytes, type(None))

DENIED_EVENTS = frozenset(
    {
        "sys._getframe",
        "sys._current_frames",
        "sys._current_exceptions",
        "sys.settrace",
        "sys.setprofile",
        "sys.addaudithook",
        "sys.monitoring.register_callback",
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
        "code.__new__",
        "marshal.load",
        "marshal.loads",
        "os.fork",
        "os.forkpty",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.system",
        "subprocess.Popen",
        "pty.spawn",
    }
)
DENIED_IMPORTS = frozenset(
    {
        "ctypes",
        "_ctypes",
        "_posixsubprocess",
        "_testcapi",
        "_testinternalcapi",
        "_testbuffer",
        "_testmultiphase",
        "_testsinglephase",
        "_testimportmultiple",
        "_xxsubinterpreters",
        "_xxinterpchannels",
        "_interpreters",
        "_interpchannels",
        "_interpqueues",
    }
)
# Class attributes the standard library itself reassigns at run time (e.g. weakref.finalize records that it
# registered its atexit hook): not evidence of tampering.
RUNTIME_CLASS_ATTRIBUTES = frozenset({"_registered_with_atexit", "_dirty"})
FRAME_ATTRIBUTES = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "gi_code", "cr_code", "ag_code"})
DENIED_PATHS = ("/proc", "/dev/fd", "/dev/stdin", "/dev/stdout", "/dev/stderr", "/dev/mem", "/dev/kmem", "/dev/port")


def main():
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)  # _thread.interrupt_main() must not reach this thread
    nonce, job = read_job()

    def finish(passed, detail):
        """Report and end the process at once: no atexit hook, destructor or thread of the response runs after."""
        text = str.replace(str.replace(detail[:MAX_DETAIL], "\n", " "), "\r", " ")
        line = "\niterpo-result " + nonce + (" pass " if passed else " fail ") + text + "\n"
        data = str.encode(line, "utf-8", "replace")
        while data:
            data = data[os_write(RESULT_FD, data) :]
        os_exit(0)

    try:
        run = prepare(job)
    except BaseException as exc:
        finish(False, "harness: could not prepare the run: " + describe(exc))
    if run.problem:
        finish(False, run.problem)
    start_thread(worker, (run,))
    try:
        # From here no thread or process can be created (threads count as processes for this limit): no
        # response thread can race the main thread, and no child can read this process's memory.
        resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))
    except (OSError, ValueError):
        pass  # the thread count checks below still hold
    for phase in ("top-level code", "tests"):
        run.outcome[0] = (False, "harness: the worker did not report")
        run.to_worker.release()
        run.to_main.acquire()
        gc_disable()  # first, before anything that allocates: see the module docstring
        if thread_count() != 1:
            finish(False, f"a thread the response started was still running after its {phase}")
        if run.denied:
            finish(False, "blocked by the sandbox: " + run.denied[0])
        passed, detail = run.outcome[0]
        if not passed:
            finish(False, detail)
        problem = find_tampering(run)
        if problem:
            finish(False, f"{problem} (found after the response's {phase})")
    finish(True, "passed")


def read_job():
    chunks = []
    while True:
        chunk = os_read(0, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    devnull = os_open("/dev/null", O_RDONLY)  # the job is gone from stdin before any response code runs
    os_dup2(devnull, 0)
    os_close(devnull)
    protocol, nonce, code, tests, global_names, preload = marshal.loads(b"".join(chunks))
    if protocol != PROTOCOL:
        raise SystemExit(f"harness protocol {protocol} is not {PROTOCOL}")
    return nonce, SimpleNamespace(code=code, tests=tests, global_names=frozenset(global_names), preload=preload)


def prepare(job):
    """Everything before response code runs: compile, import, snapshot, guards, audit hook."""
    run = SimpleNamespace(problem=None, outcome=[None], denied=[], to_worker=new_lock(), to_main=new_lock())
    run.to_worker.acquire()
    run.to_main.acquire()
    here = os_getcwd()
    sys.path[:] = [p for p in sys.path if p and p != here]  # files the response writes here are never imported
    try:
        run.code = compile(job.code, MODULE_NAME + ".py", "exec", dont_inherit=True, optimize=0)
    except BaseException as exc:  # SyntaxError, ValueError (null bytes), RecursionError...
        run.problem = describe(exc)
        return run
    for name in job.preload:
        try:
            __import__(name)
        except BaseException:
            pass  # a module this interpreter lacks: the response's own import will say so
    if "_posixsubprocess" not in sys.modules:
        # `import subprocess` (and asyncio, which imports it) keeps working; starting a process does not
        sys.modules["_posixsubprocess"] = ModuleType("_posixsubprocess")
    sys.pycache_prefix = "/nonexistent-iterpo-pycache"  # later imports compile from source: no marshal.loads
    sys.dont_write_bytecode = True
    run.module = ModuleType(MODULE_NAME)
    run.module.__builtins__ = builtins
    run.module_dict = vars(run.module)
    sys.modules[MODULE_NAME] = sys.modules["__main__"] = run.module  # `import __main__` must not reach this file
    take_snapshot(run)
    run.test_ns = {}
    guards = load_guards(run)
    run.tests, run.global_names = [], job.global_names
    for line, source, bound in job.tests:
        try:
            code = compile_test(source, guards)
        except BaseException as exc:
            run.problem = f"harness: hidden test line {line} does not compile: {describe(exc)}"
            return run
        run.tests.append((line, code, frozenset(bound)))
    gc_collect()  # the harness's own garbage goes now, not into gc.garbage later
    sys.addaudithook(make_audit_hook(run))
    return run


def take_snapshot(run):
    """What the checks compare against, and what the audit hook protects."""
    run.modules = sys.modules
    run.saved_modules = {}  # name -> (module, its live dict, a copy of that dict)
    protected, run.saved_classes = set(), {}  # class id -> (class, its live dict, a copy of that dict)
    for name, module in list(sys.modules.items()):
        if type(module) is not ModuleType and module is not None:
            continue
        live = vars(module) if module is not None else None
        run.saved_modules[name] = (module, live, dict(live) if live is not None else None)
        if module is None or name in OWN_MODULES:
            continue
        protected.add(id(module))  # no __class__ swap: attribute lookups on it stay plain
        for value in live.values():
            if type(value) is FunctionType:
                protected.add(id(value))
            elif isinstance(value, type):
                for member in dict_of(value).values():
                    member = getattr(member, "__func__", member)  # classmethod, staticmethod
                    if type(member) is FunctionType:
                        protected.add(id(member))
    run.classes = all_classes()  # kept: their ids stay valid while they live
    protected.update(run.classes)
    for cls in run.classes.values():
        if not flags_of(cls) & IMMUTABLETYPE:  # built-in types cannot be changed at all
            live_class_dict = dict_of(cls)
            run.saved_classes[id(cls)] = (cls, live_class_dict, dict(live_class_dict))
    run.protected = frozenset(protected)
    run.builtins_saved = dict(vars(builtins))
    run.sys_dict = vars(sys)
    run.sys_lists = [
        (name, run.sys_dict[name], list(run.sys_dict[name])) for name in ("path", "meta_path", "path_hooks")
    ]
    run.importer_cache = sys.path_importer_cache
    run.importer_cache_saved = dict(sys.path_importer_cache)


def all_classes():
    """Every class that exists now, by id: classes made later are the response's (or made for it)."""
    found, stack = {}, [object]
    while stack:
        cls = stack.pop()
        if id(cls) in found:
            continue
        found[id(cls)] = cls
        try:
            stack.extend(type.__subclasses__(cls))
        except TypeError:
            pass
    return found


def make_audit_hook(run):
    denied, protected, test_ns, realpath = run.denied, run.protected, run.test_ns, make_realpath()
    # Two readers the hook lets through, recognised by the identity of their code (it cannot be forged):
    # unittest's assertRaises clears the frames of the exception it caught (traceback.clear_frames only clears
    # them and returns nothing), and the import system unmarshals the interpreter's own frozen modules.
    traceback = sys.modules.get("traceback")
    frame_clearer = (traceback.clear_frames.__code__,) if traceback is not None else None
    bootstrap = sys.modules["_frozen_importlib"]
    frozen_loaders = (
        (vars(bootstrap.FrozenImporter)["get_code"].__func__.__code__,),
        (bootstrap._call_with_frames_removed.__code__, vars(bootstrap.FrozenImporter)["exec_module"].__func__.__code__),
    )
    looking = [None]  # the thread whose raised_by is calling the real sys._getframe

    def raised_by(chain):
        """True when the Python code that raised the current audit event is chain[0], called by chain[1]..."""
        if chain is None:
            return False
        collecting = gc_isenabled()
        gc_disable()  # no response destructor may run while the real sys._getframe is allowed
        looking[0] = thread_id()
        try:
            frame = real_getframe(2)  # 0: this function, 1: the hook, 2: who raised the event
            for code in chain:
                if frame is None or frame.f_code is not code:
                    return False
                frame = frame.f_back
            return True
        finally:
            looking[0] = None
            if collecting:
                gc_enable()

    def deny(what):
        denied.append(what)  # the main thread reads it; the response cannot reach this list
        raise PermissionError("blocked by the iterpo sandbox: " + what)

    def check_path(path, from_os_open, verb="opening"):
        if type(path) is int:
            return  # an already open descriptor
        if type(path) is bytes:
            path = bytes.decode(path, "utf-8", "surrogateescape")
        if type(path) is not str:
            deny("opening a path given as " + type(path).__name__)
        resolved = realpath(path)
        for prefix in DENIED_PATHS:
            if resolved == prefix or str.startswith(resolved, prefix + "/"):
                deny(verb + " " + path)
        if from_os_open and is_directory(resolved):
            # a directory descriptor would let os.open(..., dir_fd=) reach paths this check never sees
            deny("os.open of a directory")

    def hook(event, args):
        if event in DENIED_EVENTS or str.startswith(event, "ctypes."):
            if event == "sys._getframe" and looking[0] == thread_id():
                return  # raised_by's own call
            if event == "marshal.loads" and (raised_by(frozen_loaders[0]) or raised_by(frozen_loaders[1])):
                return  # (raised_by must be called from here directly: it counts frames)
            deny(event)
        elif event == "object.__getattr__":
            obj, name = args
            if name in FRAME_ATTRIBUTES and not (name == "tb_frame" and raised_by(frame_clearer)):
                deny("reading ." + name + " (frames lead into the harness)")
            if name == "__code__" and type(obj) is FunctionType and obj.__globals__ is test_ns:
                deny("reading the __code__ of a function of the hidden tests")
        elif event == "object.__setattr__" or event == "object.__delattr__":
            obj, name = args[0], args[1]
            if name == "__code__":
                deny("replacing a function's __code__")
            if name == "__class__" and id(type(obj)) in protected:
                deny(f"changing the class of a {describe_object(type(obj))} object")
            if id(obj) in protected:
                deny(f"changing {describe_object(obj)}.{name}")
        elif event == "open":
            check_path(args[0], args[1] is None)
        elif event == "os.chdir":
            if type(args[0]) is int:
                deny("os.fchdir")
            check_path(args[0], False, "entering")
        elif event == "import":
            if str.partition(args[0], ".")[0] in DENIED_IMPORTS:
                deny("import " + args[0])

    return hook


def is_directory(path):
    try:
        return os_stat(path).st_mode & 0o170000 == 0o040000
    except OSError:
        return False


def make_realpath():
    """os.path.realpath on captured system calls: the response may rebind posixpath's functions."""
    S_IFMT, S_IFLNK = 0o170000, 0o120000

    def realpath(path):
        parts = str.split(path if str.startswith(path, "/") else os_getcwd() + "/" + path, "/")
        resolved, hops = [], 0
        while parts:
            part = parts.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                resolved = resolved[:-1]
                continue
            candidate = "/" + "/".join(resolved + [part])
            try:
                is_link = os_lstat(candidate).st_mode & S_IFMT == S_IFLNK
            except OSError:
                is_link = False
            if not is_link:
                resolved.append(part)
                continue
            hops += 1
            if hops > 40:
                return candidate  # a symlink loop: the open fails anyway
            target = os_readlink(candidate)
            parts = str.split(target, "/") + parts
            if str.startswith(target, "/"):
                resolved = []
        return "/" + "/".join(resolved)

    return realpath


def describe_object(obj):
    try:
        name = obj.__qualname__ if isinstance(obj, type) or type(obj) is FunctionType else obj.__name__
        module = obj.__module__ if isinstance(obj, type) or type(obj) is FunctionType else None
        return "".join([module, ".", name]) if type(module) is str else "".join([name])
    except BaseException:
        return "a protected object"


def describe(exc):
    """`Type: message` as an exact str; the message may be the response's own code (__str__), so guarded."""
    try:
        name, text = type(exc).__name__, str(exc)
        return ("".join([name, ": ", text]) if text else "".join([name]))[:MAX_DETAIL]
    except BaseException:
        return "an exception that could not be printed"


# ---- the worker thread -------------------------------------------------------------------------------------


def worker(run):
    for phase in (run_response, run_tests):
        run.to_worker.acquire()
        gc_enable()
        try:
            outcome = phase(run)
        except BaseException as exc:
            outcome = (False, "harness: " + describe(exc))
        gc_disable()
        run.outcome[0] = outcome
        run.to_main.release()
    run.to_worker.acquire()  # never released: the worker stays parked so that the thread count stays one


def run_response(run):
    try:
        exec(run.code, run.module_dict)
    except SystemExit:
        return False, "the response exited (SystemExit) while its top-level code ran, before the tests"
    except BaseException as exc:
        return False, describe(exc)
    return True, ""


def run_tests(run):
    modules = run.modules
    for name in list(modules):
        if name not in run.saved_modules:
            del modules[name]  # imported by the response: the tests import their own copy
    for key in list(run.importer_cache):
        if key not in run.importer_cache_saved:
            del run.importer_cache[key]
    ns = run.test_ns
    for name, value in list(run.module_dict.items()):
        if type(name) is not str or name in run.builtins_saved or (name[:2] == "__" and name[-2:] == "__"):
            continue  # never the response's shadows of builtins (abs, len, AssertionError...) nor its dunders
        ns[name] = run.pristine_copy(vars(value)["__name__"]) if is_saved_module(run, value) else value
    ns["__builtins__"] = run.test_builtins
    ns["__name__"] = "__main__"
    for line, code, bound in run.tests:
        before = dict(ns)
        try:
            exec(code, ns)
        except SystemExit:
            return False, f"hidden test line {line}: SystemExit (the tests were ended early)"
        except BaseException as exc:
            return False, f"hidden test line {line}: {run.rejected[0] if run.rejected else describe(exc)}"
        if run.rejected:  # refused, and the refusal caught by code in between
            return False, f"hidden test line {line}: {run.rejected[0]}"
        problem = namespace_changes(run, before, bound)
        if problem:
            return False, f"hidden test line {line}: {problem}"
    return True, ""


def is_saved_module(run, value):
    if type(value) is not ModuleType:
        return False
    name = vars(value).get("__name__")
    saved = run.saved_modules.get(name) if type(name) is str else None
    return saved is not None and saved[0] is value and name not in OWN_MODULES


def namespace_changes(run, before, bound):
    """Something other than a test statement changed the tests' namespace, builtins or module copies."""
    ns = run.test_ns
    for name in ns:
        if type(name) is not str:
            return "the tests' namespace got a key that is not a string"
    if "*" not in bound:
        for name, value in before.items():
            if name in bound or name in run.global_names or name[:10] == "__iterpo_t":
                continue
            if ns.get(name, MISSING) is not value:
                return f"the tests' name {name!r} was changed by the response"
    if ns.get("__builtins__") is not run.test_builtins:
        return "the tests' builtins were replaced"
    for name, value in run.builtins_saved.items():
        if name != "__import__" and run.test_builtins.get(name, MISSING) is not value:
            return f"the tests' builtin {name!r} was changed"
    for name, copy in run.copies.items():
        current = vars(copy)
        for key, value in run.saved_modules[name][2].items():
            if current.get(key, MISSING) is not value:
                return f"the tests' copy of {name}.{key} was changed"
    return None


# ---- the main thread's checks ------------------------------------------------------------------------------


def find_tampering(run):
    """The first change the response made to shared state that could sway the tests, or None.

    Runs on the main thread with the collector off: only identity comparisons, and dictionary lookups by keys
    first checked to be exact strings, so that no method of the response runs here.
    """
    if gc_get_debug():
        return "the garbage collector's debug flags were changed"
    sys_dict = run.sys_dict
    for key in sys_dict:
        if type(key) is not str:
            return "module sys got an attribute key that is not a string"
    if sys_dict.get("modules") is not run.modules or sys_dict.get("path_importer_cache") is not run.importer_cache:
        return "sys.modules or sys.path_importer_cache was replaced"
    for name, value, items in run.sys_lists:
        current = sys_dict.get(name)
        if current is not value or len(current) != len(items):
            return f"sys.{name} was changed"
        for a, b in zip(current, items):
            if a is not b:
                return f"sys.{name} was changed"
    for key in run.importer_cache:
        if type(key) is not str:
            return "sys.path_importer_cache got a key that is not a string"
    for key, finder in run.importer_cache_saved.items():
        if run.importer_cache.get(key, MISSING) is not finder:
            return f"sys.path_importer_cache[{key!r}] was changed"
    for name in run.modules:
        if type(name) is not str:
            return "sys.modules got a key that is not a string"
    for name, (module, live, saved) in run.saved_modules.items():
        if run.modules.get(name, MISSING) is not module:
            return f"sys.modules[{name!r}] was replaced or removed"
        if saved is None or name in ("sys", "__main__", MODULE_NAME):
            continue  # sys holds stdout & co, which a response may legitimately rebind; the rest is the response's
        for key in live:
            if type(key) is not str:
                return f"module {name} got an attribute key that is not a string"
        for key, value in saved.items():
            if replaced(value, live.get(key, MISSING)):
                return f"the response modified {name}.{key}"
    for cls, live, saved in run.saved_classes.values():
        # class attribute assignment raises no audit event: compared here (class dicts only hold string keys)
        for key, value in saved.items():
            if replaced(value, live.get(key, MISSING)) and key not in RUNTIME_CLASS_ATTRIBUTES:
                return f"the response modified {describe_object(cls)}.{key}"
    return None


def replaced(old, new):
    """True unless new is old, or a change the standard library makes on its own while it runs:
    a lazily set attribute that was None (asyncio's event loop policy, tempfile.tempdir...), or a plain value
    set again to an equal plain value (time.tzname). Only exact built-in types are compared by value."""
    if new is old or old is None and new is not MISSING:
        return False
    if type(new) is not type(old) or not plain(old) or not plain(new):
        return True
    return old != new


def plain(value):
    if type(value) is tuple:
        return all(any(type(item) is t for t in SCALARS) for item in value)
    return any(type(value) is t for t in SCALARS)


def load_guards(run):
    """The guards that run with the tests (_code_harness_guards.py), in a namespace of their own."""
    guards = {
        "__builtins__": dict(run.builtins_saved),
        "__name__": "iterpo_guards",
        "MODULE_NAME": MODULE_NAME,
        "OWN_MODULES": OWN_MODULES,
        "PREEXISTING_CLASSES": run.classes,
        "SAVED_MODULES": run.saved_modules,
    }
    exec(GUARDS_CODE, guards)  # GUARDS_CODE: set by the loader (main.py, see iterpo.judges.code), which runs this file
    sys._getframe = guards["fake_getframe"]
    vars(sys.modules["_posixsubprocess"]).setdefault("fork_exec", guards["no_processes"])
    run.copies, run.rejected, run.pristine_copy = guards["COPIES"], guards["REJECTED"], guards["pristine_copy"]
    run.test_builtins = dict(run.builtins_saved, __import__=guards["test_import"])
    return guards


def compile_test(source, guards):
    """Compile one rewritten test statement; its placeholder constants become the guard functions, so the
    tests reach them without any name that code holding the tests' namespace could rebind."""
    swap = {
        "\x00iterpo:cmp": guards["compare"],
        "\x00iterpo:chain": guards["compare_chain"],
        "\x00iterpo:truth": guards["truth"],
        "\x00iterpo:pair": guards["pair"],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "'str' object is not callable": the placeholders, swapped below
        code = compile(source, "<hidden tests>", "exec", dont_inherit=True, optimize=0)

    def swapped(code):
        consts = tuple(
            swap[c] if type(c) is str and c in swap else swapped(c) if type(c) is CodeType else c
            for c in code.co_consts
        )
        return code.replace(co_consts=consts)

    return swapped(code)


if __name__ == "__main__":
    main()
