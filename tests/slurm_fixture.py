"""A real single-node Slurm (munged + slurmctld + slurmd) for the executor tests.

Installs Debian's ``slurm-wlm`` and ``munge`` when missing (root only), writes a private
``slurm.conf`` under ``/tmp/pmat-slurm`` (``SLURM_CONF`` points the client tools at it, so
a machine's own Slurm config is never touched), starts the daemons and stops, at the end of
the session, the ones it started. Idempotent: a cluster already answering on that config is
reused as it is. Where Slurm cannot be installed or started the tests skip, saying why.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BASE = Path("/tmp/pmat-slurm")
DAEMONS = ("slurmctld", "slurmd")


def _run(argv: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def _install() -> str | None:
    """Install the packages when a binary is missing; the reason it cannot, or None."""
    if all(shutil.which(b) for b in ("sbatch", "slurmctld", "slurmd", "munged")):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "slurm-wlm/munge are not installed and this is not root on a Debian-like machine (apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
        try:
            res = _run(argv, timeout=300, env=env)
        except subprocess.TimeoutExpired:
            return f"{' '.join(argv)} timed out"
        if res.returncode != 0:
            return f"{' '.join(argv)} failed: {(res.stderr or res.stdout).strip().splitlines()[-1:]}"
    return None


def _munge_up() -> bool:
    return shutil.which("munge") is not None and _run(["munge", "-n"], timeout=10).returncode == 0


def _start_munge(started: list[int]) -> str | None:
    if _munge_up():
        return None
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        _run(["mungekey", "--create", "--keyfile", str(key)])
        shutil.chown(key, "munge", "munge")
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    res = _run(["runuser", "-u", "munge", "--", "munged"])
    if res.returncode != 0 or not _munge_up():
        return f"munged did not start: {res.stderr.strip()}"
    try:
        started.append(int(Path("/run/munge/munged.pid").read_text()))
    except (OSError, ValueError):
        pass
    return None


def write_conf(base: Path) -> Path:
    """A one-node cluster named after this host: all its CPUs and memory, one partition."""
    host = socket.gethostname().split(".")[0]
    mem_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20) - 1024
    for d in ("state", "spool", "log"):
        (base / d).mkdir(parents=True, exist_ok=True)
    conf = base / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=pmattest",
        f"SlurmctldHost={host}(127.0.0.1)",
        "SlurmUser=root",
        "AuthType=auth/munge",
        "SlurmctldPort=6817",
        "SlurmdPort=6818",
        f"StateSaveLocation={base}/state",
        f"SlurmdSpoolDir={base}/spool",
        f"SlurmctldPidFile={base}/slurmctld.pid",
        f"SlurmdPidFile={base}/slurmd.pid",
        f"SlurmctldLogFile={base}/log/slurmctld.log",
        f"SlurmdLogFile={base}/log/slurmd.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU_Memory",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=2",
        "MinJobAge=600",
        "KillWait=5",
        "ReturnToService=2",
        "MpiDefault=none",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={mem_mib} State=UNKNOWN",
        f"PartitionName=pmat Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]))
    return conf


def _cluster_up(env: dict[str, str]) -> bool:
    res = _run(["sinfo", "-h", "-o", "%t"], timeout=10, env=env)
    return res.returncode == 0 and any(s.strip().rstrip("*") in ("idle", "mix", "alloc") for s in res.stdout.split())


def _pid(base: Path, daemon: str) -> int | None:
    try:
        return int((base / f"{daemon}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def start_cluster(base: Path = BASE) -> tuple[dict[str, str], list[int], str | None]:
    """(environment for the client tools, pids this call started, reason it cannot run or None)."""
    started: list[int] = []
    reason = _install() or _start_munge(started)
    if reason:
        return {}, started, reason
    env = {**os.environ, "SLURM_CONF": str(base / "slurm.conf")}
    if (base / "slurm.conf").exists() and _cluster_up(env):
        return env, started, None
    write_conf(base)
    for daemon in DAEMONS:
        old = _pid(base, daemon)
        if old and Path(f"/proc/{old}").exists():
            continue
        res = _run([daemon], env=env)
        if res.returncode != 0:
            return env, started, f"{daemon} did not start: {res.stderr.strip()[-300:]}"
        for _ in range(50):  # the daemon writes its pid file once it has forked
            if (pid := _pid(base, daemon)) is not None:
                started.append(pid)
                break
            time.sleep(0.1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if _cluster_up(env):
            return env, started, None
        _run(["scontrol", "update", f"nodename={socket.gethostname().split('.')[0]}", "state=resume"], env=env)
        time.sleep(1)
    log = (base / "log" / "slurmctld.log").read_text()[-400:] if (base / "log" / "slurmctld.log").exists() else ""
    return env, started, f"the node did not become idle within 60 s: {log}"


def stop(pids: list[int]) -> None:
    for pid in reversed(pids):  # slurmd, slurmctld, then munged
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="session")
def slurm_env() -> Iterator[dict[str, str]]:
    """Environment (``SLURM_CONF``) for talking to a live single-node Slurm, or a skip."""
    env, started, reason = start_cluster()
    if reason:
        stop(started)
        pytest.skip(f"no Slurm: {reason}")
    try:
        yield env
    finally:
        stop(started)
