"""The bubblewrap sandbox: programs run, and cannot reach the network, write
outside their tmpfs, or outlast their limits; without bwrap nothing runs."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest

from acorn import sandbox
from acorn.errors import AcornError

needs_bwrap = pytest.mark.skipif(not sandbox.available(), reason="bubblewrap (bwrap) is not installed or cannot "
                                 "create namespaces here; .ci/run installs it")


def _running(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line holds marker."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if marker.encode() in (d / "cmdline").read_bytes() and \
                    (d / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                pids.append(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


@needs_bwrap
def test_a_program_runs_with_its_stdin_files_and_exit_status():
    r = sandbox.run_python("import sys\nprint(sys.stdin.read().upper())\nprint('to stderr', file=sys.stderr)\n"
                           "sys.exit(3)", stdin="hello")
    assert (r.returncode, r.stdout, r.stderr, r.timed_out) == (3, "HELLO\n", "to stderr\n", False)
    assert not r.ok and r.status == "failed (3): to stderr"
    r = sandbox.run([sandbox.python_executable(), "-I", "/sandbox/a.py"],
                    files={"a.py": "print(open('/sandbox/b.txt').read())", "b.txt": "data"})
    assert r.ok and r.stdout == "data\n"


@needs_bwrap
def test_there_is_no_network():
    """A server listening on the host's loopback is out of reach, and so is
    anything beyond it: the syscall filter refuses every socket family but
    AF_UNIX (EAFNOSUPPORT), over a network namespace of its own."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # reachable from here
        server.accept()[0].close()
        r = sandbox.run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                               "print('connected')")
        assert r.returncode == 1 and "[Errno 97]" in r.stderr and "connected" not in r.stdout
        with pytest.raises(TimeoutError):
            server.accept()
        r = sandbox.run_python("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)")
        assert r.returncode == 1 and "Address family not supported" in r.stderr
    finally:
        server.close()


@needs_bwrap
def test_nothing_outside_its_tmp_is_writable_or_visible(tmp_path):
    """Writes to the system, the root and its own files fail; /tmp works but
    is private; the host's files (this test's directory, the project, /root,
    /etc) are not there at all."""
    secret = tmp_path / "secret.txt"
    secret.write_text("host data")
    code = f"""
import os
for path in ("/usr/x", "/x", "/sandbox/x", "/sandbox/main.py", "/etc/x"):
    try:
        open(path, "w").write("x")
        print("wrote", path)
    except OSError as e:
        print("refused", path, e.errno)
open("/tmp/mine", "w").write("ok")
print("tmp", open("/tmp/mine").read())
for path in ({str(tmp_path)!r}, {str(secret)!r}, {os.getcwd()!r}, "/root", "/etc/passwd", "/home"):
    print("seen" if os.path.exists(path) else "absent", path)
"""
    r = sandbox.run_python(code)
    assert r.ok, r.stderr
    lines = r.stdout.splitlines()
    assert [x.split()[0] for x in lines[:5]] == ["refused"] * 5 and all(x.endswith(" 30") for x in lines[:5])  # EROFS
    assert lines[5] == "tmp ok"
    assert all(x.startswith("absent") for x in lines[6:]) and len(lines) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.txt"] and not Path("/tmp/mine").exists()


@needs_bwrap
def test_a_fork_bomb_stops_at_the_process_cap_and_nothing_survives():
    """Forks fail once the sandbox holds `processes` processes; at the time
    limit the whole group is killed, and run() returns only when no process
    of the program is left."""
    count = """
import os, sys, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        n += 1
except OSError as e:
    print(n, e.errno, flush=True)
"""
    r = sandbox.run_python(count, limits=sandbox.Limits(processes=8, seconds=5))
    n, errno = map(int, r.stdout.split())
    assert 0 < n < 8 and errno == 11  # EAGAIN: the parent and its children fill the cap
    marker = "forkbomb_7f3a"
    bomb = f"# {marker}\nimport os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    r = sandbox.run([sandbox.python_executable(), "-I", "/sandbox/main.py", marker], files={"main.py": bomb},
                    limits=sandbox.Limits(seconds=1))
    assert r.timed_out and r.returncode is None and r.status == "timed out"
    assert _running(marker) == []


@needs_bwrap
@pytest.mark.parametrize("code,limits,expect", [
    ("while True:\n    pass\n", sandbox.Limits(seconds=1), "timed out"),
    ("blocks = []\nwhile True:\n    blocks.append(bytearray(10**7))\n", sandbox.Limits(memory_mb=200), "MemoryError"),
    ("open('/tmp/big', 'wb').write(bytes(20 << 20))\n", sandbox.Limits(file_mb=16), "File too large"),
    ("import os\nfor i in range(64):\n    open(f'/dev/shm/{i}', 'wb').write(bytes(1 << 20))\n",
     sandbox.Limits(tmp_mb=8), "No space left on device"),
    ("while True:\n    print('x' * 1000)\n", sandbox.Limits(output_bytes=5000), "output limit"),
])
def test_loops_memory_hogs_and_floods_are_stopped(code, limits, expect):
    r = sandbox.run_python(code, limits=limits)
    assert not r.ok and expect in r.status
    assert r.seconds < limits.seconds + 20  # killed at the limit, not left to run
    if expect == "output limit":
        assert r.output_capped and len(r.stdout) == 5000


def test_without_bwrap_it_refuses_and_runs_nothing(tmp_path, monkeypatch):
    """No bwrap on PATH, or a bwrap that cannot make namespaces: one line
    saying how to fix it, and the program is not run some other way."""
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('ran')"
    monkeypatch.setattr(sandbox, "_PROBED", {})
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(AcornError) as e:
        sandbox.run_python(code)
    assert "bwrap" in str(e.value) and "apt-get install bubblewrap" in str(e.value) and "\n" not in str(e.value)
    assert not sandbox.available()
    bin_dir = Path(tempfile.mkdtemp(prefix="fake-bwrap-"))  # one the sandbox user (nobody, under root) can reach
    try:
        bin_dir.chmod(0o755)
        fake = bin_dir / "bwrap"
        fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
        fake.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
        with pytest.raises(AcornError) as e:
            sandbox.run_python(code)
    finally:
        shutil.rmtree(bin_dir)
    assert "cannot create a sandbox here (bwrap: No permissions to create new namespace)" in str(e.value)
    assert not marker.exists()


def test_without_the_seccomp_library_it_refuses_and_runs_nothing(tmp_path, monkeypatch):
    """The syscall filter is not optional: without pyseccomp (or libseccomp
    under it) nothing runs, bwrap or not, and the message says what to install."""
    marker = tmp_path / "ran"
    monkeypatch.setattr(sandbox, "_FILTER", [])
    monkeypatch.setattr(sandbox, "_PROBED", {})
    monkeypatch.setitem(sys.modules, "pyseccomp", None)  # import pyseccomp -> ImportError
    with pytest.raises(AcornError) as e:
        sandbox.run_python(f"open({str(marker)!r}, 'w').write('ran')")
    msg = str(e.value)
    assert "seccomp filter cannot be built" in msg and "pip install pyseccomp" in msg and "libseccomp2" in msg
    assert "\n" not in msg and not marker.exists() and not sandbox.available()
