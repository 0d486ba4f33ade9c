"""Process identity, liveness and group signalling for detached jobs.

A process is (pid, start ticks from /proc/<pid>/stat, boot id): a pid reused by an
unrelated process has other start ticks, and a reboot changes the boot id. The
start ticks do not move when the wall clock is adjusted (psutil's create_time does).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks after boot), or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    rest = raw[raw.rfind(")") + 2 :].split()
    return int(rest[19])


def _state(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()[0]


@dataclass(frozen=True)
class ProcIdentity:
    pid: int
    start_ticks: int
    boot_id: str

    @classmethod
    def of(cls, pid: int) -> ProcIdentity:
        ticks = start_ticks(pid)
        if ticks is None:
            raise ProcessLookupError(pid)
        return cls(pid, ticks, boot_id())

    @classmethod
    def from_dict(cls, d: dict) -> ProcIdentity:
        return cls(int(d["pid"]), int(d["start_ticks"]), str(d["boot_id"]))

    def as_dict(self) -> dict:
        return asdict(self)

    def alive(self) -> bool:
        """True only if this very process (not a pid reuse) still runs."""
        if self.boot_id != boot_id():
            return False
        if start_ticks(self.pid) != self.start_ticks:
            return False
        return _state(self.pid) not in (None, "Z", "X")

    def signal_group(self, sig: int) -> bool:
        """Send ``sig`` to the process group led by this process, if it is still ours."""
        if not self.alive():
            return False
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def terminate(self, grace_s: float = 10.0) -> None:
        """SIGTERM to the group, SIGKILL after ``grace_s`` if it is still alive."""
        if not self.signal_group(signal.SIGTERM):
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if not self.alive():
                return
            time.sleep(0.05)
        self.signal_group(signal.SIGKILL)


def spawn_detached(argv: list[str], *, log_path: Path, cwd: Path, env: dict[str, str] | None = None,
                   keep_fds: tuple[int, ...] = ()) -> ProcIdentity:
    """Start ``argv`` in its own session and process group, stdout/stderr to ``log_path``.

    The child survives the parent's exit, a closed terminal and SIGHUP. Its umask is 077:
    whatever it writes (trainer checkpoints, logs, outputs) is owner-only. ``keep_fds`` are
    inherited (a lock the child holds for as long as it lives).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,
            close_fds=True,
            pass_fds=keep_fds,
            umask=0o077,
        )
    finally:
        os.close(fd)
    ident = ProcIdentity.of(proc.pid)
    # The supervisor never waits on the Popen object: reaping happens in reap_children().
    proc.returncode = 0  # stop Popen.__del__ from warning; liveness is tracked by identity
    return ident


def reap_children() -> None:
    """Collect exited children so they do not linger as zombies."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def logind_kills_user_processes() -> str | None:
    """A warning when systemd-logind will kill this user's processes at logout."""
    conf_files = [Path("/etc/systemd/logind.conf"), *sorted(Path("/etc/systemd/logind.conf.d").glob("*.conf"))]
    value = None
    for f in conf_files:
        try:
            for line in f.read_text().splitlines():
                line = line.strip()
                if line.startswith("KillUserProcesses="):
                    value = line.split("=", 1)[1].strip().lower()
        except OSError:
            continue
    if value not in ("yes", "true", "1", "on"):
        return None
    user = os.environ.get("USER", "$USER")
    linger = Path(f"/var/lib/systemd/linger/{user}").exists()
    if linger:
        return None
    return (
        "systemd-logind has KillUserProcesses=yes: jobs die at logout even detached. "
        f"Run `loginctl enable-linger {user}` and start pmat under `systemd-run --user --scope pmat supervise`."
    )
