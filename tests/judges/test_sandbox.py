"""Untrusted code must fail its test case, never the run or the machine: each attack, checked."""

import os
import socket
import threading
import time
from pathlib import Path

from iterpo.judges.sandbox import SandboxLimits, check_sandbox, run_python

LIMITS = SandboxLimits(wall_seconds=6, cpu_seconds=3, memory_mb=256, max_processes=16)


def _sandbox_processes() -> list[str]:
    """Command lines of live processes run by the sandbox uid (65534); killed ones waiting to be reaped
    (state Z, holding nothing but a process-table entry) do not count."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid == 65534 and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError):
            pass
    return out


def test_the_sandbox_is_available_and_runs_good_code():
    assert "network" in check_sandbox()
    r = run_python(
        "print(sum(range(10)))\nopen('scratch.txt', 'w').write('ok')\nprint(open('scratch.txt').read())", LIMITS
    )
    assert r.ok and r.stdout.split() == ["45", "ok"]


def test_failing_code_fails():
    r = run_python("assert 1 + 1 == 3", LIMITS)
    assert r.status == "failed" and "AssertionError" in r.stderr


def test_infinite_loop_is_stopped_by_the_cpu_limit():
    start = time.time()
    r = run_python("while True:\n    pass", LIMITS)
    assert not r.ok and time.time() - start < LIMITS.wall_seconds + 2


def test_sleeping_forever_is_stopped_by_the_wall_clock():
    start = time.time()
    r = run_python("import time\ntime.sleep(1000)", LIMITS)
    assert r.status == "timeout" and time.time() - start < LIMITS.wall_seconds + 3


def test_fork_bomb_fails_and_leaves_no_process_behind():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    r = run_python(bomb, LIMITS)
    assert not r.ok
    time.sleep(0.5)
    assert _sandbox_processes() == []


def test_background_children_are_killed_at_the_end():
    code = "import subprocess\nsubprocess.Popen(['sleep', '987'], start_new_session=True)\nprint('spawned')"
    r = run_python(code, LIMITS)
    assert r.ok and "spawned" in r.stdout
    time.sleep(0.5)
    assert not any("987" in c for c in _sandbox_processes())


def test_huge_allocation_fails():
    r = run_python("x = bytearray(8 * 2**30)\nprint(len(x))", LIMITS)
    assert not r.ok and "MemoryError" in r.stderr


def test_deleting_or_writing_files_outside_the_work_dir_fails(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    os.chmod(tmp_path, 0o777)
    os.chmod(victim, 0o666)  # even a world-writable file in a world-writable directory is safe
    for code in [
        f"import os\nos.remove({str(victim)!r})",
        f"open({str(victim)!r}, 'w').write('gone')",
        f"open({str(tmp_path / 'new.txt')!r}, 'w').write('x')",
        "open('/tmp/iterpo-pwned', 'w').write('x')",
        "import shutil\nshutil.rmtree('/usr/lib', ignore_errors=False)",
        # remounting the file system writable first does not work either
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.mount(None, b'/', None, 32 | 4096, None) == 0, 'remount refused'\n"
        "open('/tmp/iterpo-pwned', 'w').write('x')",
    ]:
        r = run_python(code, LIMITS)
        assert not r.ok, code
    assert victim.read_text() == "keep me"
    assert not (tmp_path / "new.txt").exists() and not Path("/tmp/iterpo-pwned").exists()


def test_sockets_cannot_reach_anything():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(5)
    port = server.getsockname()[1]
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(_accept(server)))
    thread.start()
    r = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')", LIMITS)
    thread.join()
    server.close()
    assert not r.ok and accepted == [None]


def _accept(server):
    try:
        return server.accept()
    except TimeoutError:
        return None


def test_environment_variables_do_not_leak(monkeypatch):
    monkeypatch.setenv("ITERPO_TEST_SECRET", "s3cret")
    r = run_python(
        "import os\nprint(os.environ.get('ITERPO_TEST_SECRET'))\nassert 's3cret' not in str(os.environ)", LIMITS
    )
    assert r.ok and r.stdout.strip() == "None"


def test_python_tests_judge_scores_and_explains(tmp_path):
    from iterpo.judges.code import PythonTests, extract_code
    from iterpo.records import Prompt, Rollout

    prompt = Prompt(
        "p0", [{"role": "user", "content": "Write add(a, b)."}], "assert add(2, 3) == 5\nassert add(-1, 1) == 0"
    )
    texts = [
        "Here:\n```python\ndef add(a, b):\n    return a + b\n```",
        "```python\ndef add(a, b):\n    return a - b\n```",
        "def add(a, b):\n    while True: pass",
        "I cannot do that.",
    ]
    rollouts = [Rollout("p0", i, 1, 0, t, [1], "stop") for i, t in enumerate(texts)]
    judgements = PythonTests(wall_seconds=6, cpu_seconds=3, memory_mb=256).judge(prompt, rollouts)
    assert [j.score for j in judgements] == [1.0, 0.0, 0.0, 0.0]
    assert judgements[0].detail == "passed" and "AssertionError" in judgements[1].detail
    assert extract_code("a\n```py\nx = 1\n```\nb\n```python\ny = 2\n```") == "y = 2\n"
