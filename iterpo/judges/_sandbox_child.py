"""Runs inside the sandbox's new mount, network and PID namespaces, before the untrusted program.

Invoked as:  python -I -S _sandbox_child.py WORKDIR CPU_S MEMORY_BYTES MAX_PROCS MAX_FILE_BYTES PYTHON RESULT_FD
It is started by iterpo.judges.sandbox and must only use the standard library.

1. Every mount is made private, then read-only, except WORKDIR (bound onto
   itself first so it stays writable) and /proc: nothing outside WORKDIR can be
   written, deleted or renamed.
2. As real root (no user namespace), privileges are dropped to an unprivileged
   uid, which also makes the process-count limit effective. As root of a user
   namespace (an unprivileged caller), it enters a nested user namespace, which
   holds no capability over the mounts above, so they cannot be made writable again.
3. Resource limits: CPU seconds, address space, processes, file size, no core dumps.
4. The environment is emptied, the result pipe RESULT_FD (when not -1) is moved
   to file descriptor 3, and the program WORKDIR/main.py is exec'd.
The network namespace has no interface up, so every connection fails.
"""

import ctypes
import os
import resource
import sys

MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
CLONE_NEWUSER = 0x10000000
SANDBOX_UID = 65534  # nobody


def _mount(libc, source, target, fstype, flags):
    if libc.mount(source, target, fstype, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target!r}: {os.strerror(err)}")


def _mount_points() -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            points.append(point)
    return points


def main() -> None:
    workdir, cpu_s, memory, procs, fsize, python = sys.argv[1], *map(int, sys.argv[2:6]), sys.argv[6]
    result_fd = int(sys.argv[7]) if len(sys.argv) > 7 else -1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    _mount(libc, None, b"/", None, MS_REC | MS_PRIVATE)
    _mount(libc, workdir.encode(), workdir.encode(), None, MS_BIND)
    for point in _mount_points():
        if point == workdir or point == "/proc" or point.startswith("/proc/"):
            continue
        try:
            _mount(libc, None, point.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        except OSError:
            pass  # a mount we cannot remount (e.g. locked from a parent user namespace) stays as it is
    if _is_real_root():
        os.chown(workdir, SANDBOX_UID, SANDBOX_UID)
        for name in os.listdir(workdir):
            os.chown(os.path.join(workdir, name), SANDBOX_UID, SANDBOX_UID)
        os.setgroups([])
        os.setgid(SANDBOX_UID)
        os.setuid(SANDBOX_UID)
    else:  # root of a user namespace: enter a nested one, keeping no capability over the mounts set up above
        if libc.unshare(CLONE_NEWUSER) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWUSER): {os.strerror(err)}")
    for limit, value in [
        (resource.RLIMIT_CPU, cpu_s),
        (resource.RLIMIT_AS, memory),
        (resource.RLIMIT_NPROC, procs),
        (resource.RLIMIT_FSIZE, fsize),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, 64),
    ]:
        resource.setrlimit(limit, (value, value))
    os.chdir(workdir)
    if result_fd >= 0 and result_fd != 3:
        os.dup2(result_fd, 3)  # inheritable: the program finds its result pipe at descriptor 3
        os.close(result_fd)
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    os.execve(python, [python, "-I", "-S", "main.py"], env)


def _is_real_root() -> bool:
    """True when uid 0 here is the machine's root (the identity uid map), not root of a user namespace."""
    try:
        with open("/proc/self/uid_map") as f:
            first = f.read().split()
        return os.getuid() == 0 and first[:2] == ["0", "0"]
    except OSError:
        return os.getuid() == 0


if __name__ == "__main__":
    main()
