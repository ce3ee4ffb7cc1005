"""Running untrusted code: a bubblewrap sandbox with no network and hard limits.

Code that a model wrote (a benchmark solution, later an agent's tool call) is
run only inside bubblewrap (`bwrap`, the sandbox Flatpak uses), never
directly. Each run gets

  namespaces      --unshare-all: its own network (only a loopback that is
                  down: no connection leaves it), PIDs, IPC, UTS, cgroup and
                  user namespace; --die-with-parent and --new-session
  a filesystem    read-only binds of the system (/usr, /bin, /lib...) and of
                  the interpreter's prefix, nothing else of the host (no home,
                  no /etc, no project); the program's files read-only under
                  /sandbox; a private, size-capped tmpfs at /tmp as the only
                  writable place (and the working directory); fresh /proc; a
                  fresh /dev, read-only (its device nodes still work)
  a syscall filter seccomp (via libseccomp's Python binding, pyseccomp), loaded
                  by bwrap just before the program starts: the system calls
                  that are the usual ways out of a container fail with EPERM
                  (ptrace and process_vm_*, mount and the new mount API,
                  unshare/setns and clone with namespace flags, bpf,
                  perf_event_open, userfaultfd, io_uring, keyrings, modules,
                  kexec, reboot, TIOCSTI...); socket() of any family but
                  AF_UNIX fails (no network even if a namespace were missing);
                  clone3, whose flags a filter cannot read, says ENOSYS so the
                  C library falls back to clone; any other ABI (i386, x32)
                  kills the process
  limits          set by a launcher inside the sandbox before the program
                  starts (setrlimit): address space (RLIMIT_AS), processes
                  (RLIMIT_NPROC: a fork bomb stops at the cap), CPU seconds,
                  file size, open files, no core dumps; a wall-clock limit
                  after which the whole process group is killed (and with it
                  the PID namespace); stdout and stderr capped
  a user          when the caller is root, bwrap runs as `nobody`: root is
                  exempt from RLIMIT_NPROC, and nothing of root's is readable

If bwrap or the seccomp library is missing, or bwrap cannot create
namespaces here, `run` refuses with one line saying how to install or allow
it. There is no unsandboxed and no "best effort" fallback: every layer above
is there on every run, or nothing runs.

The API: `run(argv, files=..., stdin=..., limits=Limits(...)) -> Result` for
any program, and `run_python(code, ...)` for a Python source text.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from acorn.errors import AcornError

SECCOMP_INSTALL = ("install libseccomp and its Python binding (apt-get install libseccomp2; pip install pyseccomp); "
                   "code is never run without the syscall filter")
INSTALL = ("install bubblewrap (apt-get install bubblewrap; dnf install bubblewrap; pacman -S bubblewrap); "
           "code is never run outside the sandbox")
SANDBOX_DIR = "/sandbox"  # the program's files, read-only
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/etc/alternatives")


@dataclass(frozen=True)
class Limits:
    seconds: float = 10.0        # wall clock, from start to kill
    memory_mb: int = 512         # address space of each process (RLIMIT_AS)
    processes: int = 16          # processes and threads of the sandbox user (RLIMIT_NPROC)
    output_bytes: int = 1 << 16  # of stdout and of stderr each; more kills the program
    tmp_mb: int = 64             # size of the writable /tmp
    file_mb: int = 16            # largest file it may write (RLIMIT_FSIZE)
    open_files: int = 64         # RLIMIT_NOFILE


@dataclass
class Result:
    returncode: int | None  # None when it was killed for time or output; negative: killed by that signal
    stdout: str
    stderr: str
    timed_out: bool = False
    output_capped: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.output_capped

    @property
    def status(self) -> str:
        """A few words on how it ended: passed / timed out / output limit / failed: the last error line."""
        if self.timed_out:
            return "timed out"
        if self.output_capped:
            return "output limit"
        if self.returncode == 0:
            return "passed"
        last = next((line for line in reversed(self.stderr.splitlines()) if line.strip()), "")
        return f"failed ({self.returncode}): {last[:200]}" if last else f"failed ({self.returncode})"


# The launcher runs inside the sandbox: limits first, then the program. An
# exec keeps rlimits, so the program and everything it starts inherit them.
_LAUNCHER = """\
import json, os, resource, sys
lim = json.loads(sys.argv[1])
mb = 1 << 20
for name, value in (("AS", lim["memory_mb"] * mb), ("NPROC", lim["processes"]), ("CPU", lim["cpu_seconds"]),
                    ("FSIZE", lim["file_mb"] * mb), ("NOFILE", lim["open_files"]), ("CORE", 0)):
    resource.setrlimit(getattr(resource, "RLIMIT_" + name), (value, value))
os.execv(sys.argv[2], sys.argv[2:])
"""


# ------------------------------------------------------------------ the syscall filter
# Denied with EPERM: nothing a program that computes needs, and each a known
# way out of or around a container (escalation through the kernel's larger
# attack surfaces, tracing other processes, new namespaces, new mounts).
DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "mount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount", "fspick", "move_mount",
    "open_tree", "mount_setattr", "open_by_handle_at", "name_to_handle_at",
    "unshare", "setns", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "keyctl", "add_key", "request_key", "init_module", "finit_module", "delete_module",
    "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "syslog", "quotactl",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "iopl", "ioperm", "personality", "vhangup",
    "lookup_dcookie", "nfsservctl", "uselib",
)
_CLONE_NAMESPACES = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
_AF_UNIX = 1
_TIOCSTI = 0x5412  # pushes characters into the terminal's input: typed commands for the caller's shell

_FILTER: list[bytes] = []


def seccomp_filter() -> bytes:
    """The compiled BPF program (built once per process), or the one-line
    refusal when libseccomp or pyseccomp is missing."""
    if not _FILTER:
        try:
            import pyseccomp as sc

            f = sc.SyscallFilter(sc.ALLOW)  # the native ABI only: any other kills (libseccomp's bad-arch action)
            deny = sc.ERRNO(errno.EPERM)
            for name in DENIED_SYSCALLS:
                try:
                    f.add_rule(deny, name)
                except (ValueError, RuntimeError, OSError):  # not a syscall of this architecture
                    continue
            for flag in _CLONE_NAMESPACES:
                f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
            f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
            f.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), "socket", sc.Arg(0, sc.NE, _AF_UNIX))
            f.add_rule(deny, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, _TIOCSTI))
            fd = os.memfd_create("seccomp")
            try:
                f.export_bpf(_Fd(fd))
                size = os.lseek(fd, 0, os.SEEK_END)
                _FILTER.append(os.pread(fd, size, 0))
            finally:
                os.close(fd)
        except (ImportError, OSError, RuntimeError, ValueError) as e:
            why = f"{type(e).__name__}: {e}".splitlines()[0][:200]
            raise AcornError(f"the sandbox's seccomp filter cannot be built ({why}); {SECCOMP_INSTALL}") from None
    return _FILTER[0]


class _Fd:
    """A file descriptor where pyseccomp wants a file object."""

    def __init__(self, fd: int):
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


# ------------------------------------------------------------------ finding bwrap
def bwrap_path() -> str:
    """The bwrap executable, or a one-line refusal saying how to install it."""
    found = shutil.which("bwrap")
    if found is None:
        raise AcornError(f"running code needs the bubblewrap sandbox and `bwrap` is not on PATH; {INSTALL}")
    return found


def _unprivileged_user() -> tuple[int, int] | None:
    """(uid, gid) to run as when the caller is root: nobody. None when not root."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        return 65534, 65534


def _others_can_run(path: Path) -> bool:
    """Whether a user who owns nothing can reach and execute `path`: every
    directory above it searchable by others, the file readable and executable."""
    try:
        path = path.resolve()
        if (path.stat().st_mode & (stat.S_IROTH | stat.S_IXOTH)) != (stat.S_IROTH | stat.S_IXOTH):
            return False
        return all(p.stat().st_mode & stat.S_IXOTH for p in path.parents)
    except OSError:
        return False


def python_executable() -> str:
    """The interpreter the sandbox runs Python with: this one, unless the
    sandbox user (nobody, when we are root) cannot reach it; then the system's."""
    mine = Path(sys.executable)
    if _unprivileged_user() is None or _others_can_run(mine):
        return str(mine)
    for candidate in ("/usr/bin/python3", "/bin/python3", "/usr/local/bin/python3"):
        if _others_can_run(Path(candidate)):
            return candidate
    raise AcornError(f"the sandbox runs as user nobody (we are root) and nobody cannot run {mine}; "
                     "install a system python3 (apt-get install python3) or run as a normal user")


def _binds(python: str) -> list[str]:
    """Read-only binds of the system and of the interpreter's installation."""
    args = []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    exe = Path(python).resolve()
    prefixes = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()} if python == sys.executable else set()
    prefixes.add(exe.parent.parent)  # .../bin/python -> ...
    for p in sorted(prefixes):
        if not any(str(p).startswith(d + "/") or str(p) == d for d in SYSTEM_DIRS if os.path.isdir(d)):
            args += ["--ro-bind", str(p), str(p)]
    return args


def _features(bwrap: str) -> set[str]:
    try:
        out = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""  # the probe that follows says what is wrong
    return {flag for flag in ("--size", "--disable-userns", "--clearenv") if flag in out}


_PROBED: dict[str, tuple[str, set[str]]] = {}


def _setup() -> tuple[str, set[str]]:
    """bwrap and its optional flags, once per process, after checking that it
    can make a sandbox here (user namespaces may be off, e.g. in containers)
    with the syscall filter loaded."""
    bwrap = bwrap_path()
    seccomp_filter()
    if bwrap not in _PROBED:
        features = _features(bwrap)
        sfd = _filter_fd()
        probe = _command(bwrap, features, ["/bin/true" if os.path.exists("/bin/true") else "/usr/bin/true"],
                         python_executable(), Limits(), files={}, seccomp_fd=sfd)
        try:
            r = subprocess.run(probe, capture_output=True, text=True, env=_ENV, timeout=30, pass_fds=[sfd],
                               **_as_user())
            code, why = r.returncode, (r.stderr.strip().splitlines() or ["no message"])[-1]
        except (OSError, subprocess.TimeoutExpired) as e:
            code, why = -1, f"{type(e).__name__}: {e}"
        finally:
            os.close(sfd)
        if code != 0:
            raise AcornError(f"bwrap cannot create a sandbox here ({why}); allow unprivileged user namespaces "
                             "(sysctl kernel.unprivileged_userns_clone=1, or run the container with "
                             f"--security-opt seccomp=unconfined) or {INSTALL}")
        _PROBED[bwrap] = (bwrap, features)
    return _PROBED[bwrap]


def _filter_fd() -> int:
    """A memfd holding the BPF program, at offset 0, for bwrap's --seccomp (it reads it to the end)."""
    fd = os.memfd_create("seccomp")
    os.write(fd, seccomp_filter())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def check() -> None:
    """Raise the one-line refusal now if code cannot be run here (before a
    long generation whose programs could then not be scored)."""
    _setup()


def available() -> bool:
    """Whether code can be run here (bwrap installed and able to sandbox)."""
    try:
        _setup()
        return True
    except AcornError:
        return False


# ------------------------------------------------------------------ one run
_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}


def _as_user() -> dict:
    """Popen arguments that drop root to nobody (done in C by subprocess, so
    safe to use from several threads, unlike a preexec_fn)."""
    user = _unprivileged_user()
    return {} if user is None else {"user": user[0], "group": user[1], "extra_groups": []}


def _command(bwrap: str, features: set[str], argv: list[str], python: str, limits: Limits,
             files: dict[str, int], seccomp_fd: int) -> list[str]:
    cmd = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
           "--hostname", "sandbox", *_binds(python), "--proc", "/proc", "--dev", "/dev",
           "--seccomp", str(seccomp_fd)]
    if "--disable-userns" in features:
        cmd += ["--disable-userns"]
    # Writable places are tmpfs, that is memory outside RLIMIT_AS: each gets the size cap.
    for where in ("/tmp", "/dev/shm"):
        if "--size" in features:
            cmd += ["--size", str(limits.tmp_mb << 20)]
        cmd += ["--tmpfs", where]
    cmd += ["--remount-ro", "/dev", "--chdir", "/tmp"]  # after /dev/shm, its own mount, stays writable
    for name, fd in files.items():
        cmd += ["--ro-bind-data", str(fd), f"{SANDBOX_DIR}/{name}"]
    cmd += ["--remount-ro", "/"]  # the root bwrap built (a tmpfs holding the mount points) read-only too
    lim = asdict(limits) | {"cpu_seconds": int(limits.seconds) + 1}
    return [*cmd, "--", python, "-I", "-S", "-c", _LAUNCHER, json.dumps(lim), *argv]


def run(argv: list[str], *, files: dict[str, str | bytes] | None = None, stdin: str | bytes = b"",
        limits: Limits = Limits()) -> Result:
    """Run argv (argv[0] an absolute path inside the sandbox) with `files`
    placed read-only in /sandbox (name -> content), in the sandbox."""
    bwrap, features = _setup()
    python = python_executable()
    fds = {}
    sfd = _filter_fd()
    try:
        for name, content in (files or {}).items():
            if "/" in name or name in ("", ".", ".."):
                raise AcornError(f"sandbox file name {name!r} must be a plain file name")
            fd = os.memfd_create(name)
            os.write(fd, content.encode() if isinstance(content, str) else content)
            os.lseek(fd, 0, os.SEEK_SET)
            fds[name] = fd
        cmd = _command(bwrap, features, argv, python, limits, fds, sfd)
        return _supervise(cmd, [*fds.values(), sfd], stdin.encode() if isinstance(stdin, str) else stdin, limits)
    finally:
        for fd in [*fds.values(), sfd]:
            os.close(fd)


def run_python(code: str, *, stdin: str | bytes = b"", limits: Limits = Limits()) -> Result:
    """Run a Python program's source text in the sandbox (as /sandbox/main.py)."""
    return run([python_executable(), "-I", f"{SANDBOX_DIR}/main.py"], files={"main.py": code}, stdin=stdin,
               limits=limits)


def _supervise(cmd: list[str], fds: list[int], stdin: bytes, limits: Limits) -> Result:
    """Start the sandbox in its own process group, feed stdin, read stdout
    and stderr up to the cap, kill the group at the deadline, and return
    only when the sandbox's PID namespace is empty."""
    t0 = time.monotonic()
    info_r, info_w = os.pipe()  # bwrap writes {"child-pid": N} here: the namespace's first process
    cmd = [cmd[0], "--info-fd", str(info_w), *cmd[1:]]
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=[*fds, info_w], env=_ENV, start_new_session=True, **_as_user())
    finally:
        os.close(info_w)
    streams = (proc.stdout.fileno(), proc.stderr.fileno())
    out = {fd: bytearray() for fd in (*streams, info_r)}
    seen = dict.fromkeys(streams, 0)
    timed_out = capped = False
    sel = selectors.DefaultSelector()
    for fd in (*streams, info_r):
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    try:
        try:
            proc.stdin.write(stdin)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        open_streams = 3
        while open_streams and not capped:
            left = limits.seconds - (time.monotonic() - t0)
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                    open_streams -= 1
                elif key.fd == info_r:
                    out[info_r] += chunk
                else:
                    out[key.fd] += chunk[:max(0, limits.output_bytes - len(out[key.fd]))]
                    seen[key.fd] += len(chunk)
                    capped = capped or seen[key.fd] > limits.output_bytes
        if timed_out or capped:
            _kill(proc)
        try:
            returncode = proc.wait(timeout=max(0.1, limits.seconds - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:  # closed its pipes but kept running
            timed_out = True
            _kill(proc)
            returncode = proc.wait()
    finally:
        sel.close()
        if proc.poll() is None:
            _kill(proc)
            proc.wait()
        _wait_for_namespace(bytes(out[info_r]))
        for f in (proc.stdout, proc.stderr):
            f.close()
        os.close(info_r)
    stdout, stderr = (bytes(out[fd]).decode("utf-8", "replace") for fd in streams)
    return Result(None if (timed_out or capped) else returncode, stdout, stderr, timed_out, capped,
                  round(time.monotonic() - t0, 3))


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the sandbox's process group. bwrap's first process in the
    PID namespace dies with it (--die-with-parent), and the kernel then kills
    every process left in the namespace."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_for_namespace(info: bytes, seconds: float = 10.0) -> None:
    """Wait until the namespace's first process has exited: the kernel lets
    it go only after every other process in the namespace is gone, so then
    nothing the program started is still running."""
    try:
        pid = int(json.loads(info.decode())["child-pid"])
        fd = os.pidfd_open(pid)
    except (ValueError, KeyError, TypeError, OSError):  # no info (bwrap failed early) or already gone
        return
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            if not sel.select(timeout=seconds):
                os.kill(pid, signal.SIGKILL)
    finally:
        os.close(fd)
