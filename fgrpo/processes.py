"""Which process is which. A pid alone is reused by the kernel, so a process is named by
(host, pid, start time); `status` and `cancel` never act on a stranger that inherited a pid.
Also: a child that dies with its parent (the local launcher's trainers), and a child forked
with the parent's imports (the local launcher's ranks on CPU)."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat, field 22); None when
    there is no such process or it has exited and awaits its parent's wait() (a zombie); 0 when
    /proc cannot tell (identity then falls back to the pid alone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except FileNotFoundError:
        return None
    except OSError:
        return 0
    # comm (field 2) may hold spaces and parentheses: the fields after it follow the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # exited: only its exit status is left
        return None
    return int(fields[19])


def is_stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP, SIGTSTP, a debugger): it runs nothing, and so never
    exits by itself, until SIGCONT. False when /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] in ("T", "t")


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@dataclass(frozen=True)
class ProcessId:
    host: str
    pid: int
    start: int  # start_time(pid); 0 when unknown (no /proc)

    @classmethod
    def of(cls, pid: int | None = None) -> ProcessId:
        pid = os.getpid() if pid is None else pid
        return cls(socket.gethostname(), pid, start_time(pid) or 0)

    @classmethod
    def parse(cls, text: str) -> ProcessId:
        """`host:pid:start` (what str() gives); a bare pid (older run folders) is this host's, start unknown."""
        if text.isdigit():
            return cls(socket.gethostname(), int(text), 0)
        host, pid, start = text.rsplit(":", 2)
        return cls(host, int(pid), int(start))

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.start}"

    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()

    def alive(self) -> bool | None:
        """True while this very process runs; None when it is on another host (cannot tell)."""
        if not self.on_this_host():
            return None
        if self.start:
            return start_time(self.pid) == self.start
        return pid_exists(self.pid)

    def signal(self, signum: int) -> bool:
        """Send `signum` if this is still the same process; False (nothing sent) otherwise."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            return False
        return True


PARENT_ENV = "FGRPO_PARENT_PID"  # set by a launcher whose children must not outlive it


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """If the launcher set FGRPO_PARENT_PID, receive `signum` when it dies (a kill -9 included),
    so a trainer never trains on, orphaned. Linux: PR_SET_PDEATHSIG; elsewhere a watchdog thread.
    SIGTERM is the trainer's graceful stop: it saves the last completed step and exits."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not parent.isdigit():
        return
    parent_pid = int(parent)
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0:
            if os.getppid() != parent_pid:  # it died before the call: the signal will never come
                os.kill(os.getpid(), signum)
            return

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signum)

    threading.Thread(target=watch, name="fgrpo-parent-watch", daemon=True).start()


def parent_gone() -> bool:
    """True when the launcher that started this process has exited."""
    parent = os.environ.get(PARENT_ENV)
    return bool(parent and parent.isdigit() and os.getppid() != int(parent))


class ForkedProcess:
    """A `subprocess.Popen`-like handle (pid, returncode, poll, wait, send_signal, terminate,
    kill) on a child made by `fork_call`."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        self._lock = threading.Lock()  # a console thread polls too: only one may reap the child

    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is None:
                try:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:  # reaped by someone else: its status is lost
                    self.returncode = 255
                else:
                    if pid:
                        self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                import subprocess

                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            time.sleep(0.05)
        return self.returncode  # type: ignore[return-value]  # set by poll

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def fork_call(target: Callable[[], int], env: dict[str, str], log: os.PathLike | str) -> ForkedProcess:
    """Run `target()` in a forked copy of this process, as if started afresh with `env` added to
    its environment and its output appended to `log`; the child exits with target's return value
    (1 and a traceback in `log` if it raises). The child inherits every module this process has
    imported, which is the point: the local launcher imports the trainer's modules once, and its
    ranks start training without importing them again.

    Only for a process that has run no torch operation and initialised no CUDA (neither survives
    a fork). The child resets the signals a launcher handles to a fresh interpreter's handlers,
    and leaves by os._exit: the parent's exit handlers are not its own."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return ForkedProcess(pid)
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        # New streams on fds 1 and 2: the parent's sys.stdout may not write to fd 1 (a capture).
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the child
        sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)  # noqa: SIM115
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for s in (signal.SIGTERM, signal.SIGUSR2, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)
        os.environ.update(env)
        atexit._clear()  # the launcher's exit handlers are not the child's
        code = target()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported in the child's log and by its exit code
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
