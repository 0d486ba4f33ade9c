"""Which isolation layers a pool started now on this host would have, and what is missing.

``pmat check`` reports them (``check_line``) and refuses a host where no layer is kernel-enforced
(``kernel_isolated``); a pool names what its own checks lack (``missing_layers``). Apart from the
pool (``pool.py``) because a report must not start one: each layer is probed where it lives
(``bwrap.py``, ``landlock.py``, ``seccomp.py``), and the network namespace by ``network_prefix``,
once per process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

from engine.sandbox import bwrap, landlock, seccomp
from engine.sandbox.jobs import Limits

_NET_PROBE: dict[bool, list[str] | None] = {}


def network_prefix() -> list[str] | None:
    """The ``unshare`` command that gives a template (without bubblewrap) a network namespace of
    its own, and a mount namespace where it can put a size-limited tmpfs on its work area; the
    first of those that works here, or None."""
    root = os.geteuid() == 0
    if root not in _NET_PROBE:
        _NET_PROBE[root] = None
        for extra in (["--mount"], []):
            cmd = ["unshare", "--net", *extra] + ([] if root else ["--map-root-user"])
            try:
                if shutil.which("unshare") and subprocess.run([*cmd, "true"], capture_output=True,
                                                              timeout=10).returncode == 0:
                    _NET_PROBE[root] = cmd
                    break
            except (OSError, subprocess.SubprocessError):
                continue
    return _NET_PROBE[root]


def isolation_layers() -> dict[str, Any]:
    """The layers a pool started now on this host would have, without starting one."""
    root = os.geteuid() == 0
    on = []
    why_not = bwrap.available()
    if why_not is None:
        on += ["bwrap-mount-ns", "bwrap-pid-ns", "net-ns", "ipc-ns", f"tmpfs-quota-{Limits().disk_mb}mb"]
    elif network_prefix():
        on.append("net-ns")
        if "--mount" in (network_prefix() or []):
            on += ["mount-ns-site-packages-masked", f"tmpfs-quota-{Limits().disk_mb}mb"]
    if landlock.abi():
        on.append(f"landlock-abi-{landlock.abi()}")
    if seccomp.supported():
        on.append("seccomp")
    if root:
        on.append("own-uid")
    on += ["rlimits", "audit-hook", "scrubbed-env", "tests-outside-program"]
    return {"layers": on, "missing": missing_layers(on), "bwrap": why_not or "ok",
            "user": "root" if root else "unprivileged", "kernel": kernel_isolated(on)}


def kernel_isolated(layers: list[str]) -> bool:
    """Whether any layer the kernel enforces is there (without one, only the audit hook stands
    between a program and the host: ``pmat check`` refuses)."""
    return any(layer.startswith(("bwrap", "net-ns", "landlock", "seccomp")) for layer in layers)


def missing_layers(layers: list[str]) -> list[str]:
    """What a fully isolated pool has that ``layers`` lacks, each with why it matters."""
    want = {"bwrap-mount-ns": "bubblewrap (programs could read host files: apt-get install bubblewrap)",
            "landlock": "Landlock (kernel >= 5.13: writes outside the work dir stopped by the audit hook alone)",
            "seccomp": "seccomp (x86-64/aarch64 only: processes, sockets and memfd stopped by the audit hook alone)",
            "net-ns": "a network namespace (sockets stopped by the audit hook and seccomp alone)",
            "tmpfs-quota": "a mount namespace (no total disk quota per program, RLIMIT_FSIZE per file only)"}
    return [why for key, why in want.items() if not any(layer.startswith(key) for layer in layers)]


def check_line() -> str | None:
    """One line for ``pmat check`` when a sandbox layer is missing on this host; None when all are there."""
    host = isolation_layers()
    if not host["missing"]:
        return None
    lead = "sandbox: missing isolation layers" if host["kernel"] else "sandbox: NO kernel isolation (audit hook only)"
    return f"{lead}: {'; '.join(host['missing'])}"
