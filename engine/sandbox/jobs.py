"""What one check asks for (``Job``, under ``Limits``) and what it comes back as (``Verdict``,
one of ``STATUSES``).

Its own module because the pool (``pool.py``), its slots (``slot.py``) and the host's isolation
report (``isolation.py``) all use these, and none of them may import another in a circle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

STATUSES = ("passed", "failed", "error", "syntax_error", "timeout", "oom", "blocked")


@dataclass(frozen=True)
class Limits:
    """Per-program limits (kernel-enforced rlimits)."""

    memory_mb: int = 2048
    cpu_s: int = 20
    nproc: int = 1  # under a pool's own uid: the program's process is the only one (no fork, no threads)
    fsize_mb: int = 16
    nofile: int = 64
    disk_mb: int = 64  # all of a program's files together (the tmpfs under bubblewrap)


@dataclass
class Job:
    """One check: ``program`` runs confined; ``runner_code`` (trusted tests) runs outside it.

    ``setup`` runs in the child after the program (MBPP's test_setup_code). ``aliases``
    binds a test-side name to a program global (``{"candidate": "add"}``).
    """

    program: str
    runner_code: str
    setup: str = ""
    aliases: dict[str, str] = field(default_factory=dict)
    timeout: float = 10.0


@dataclass
class Verdict:
    status: str
    error_type: str | None = None
    detail: str = ""
    blocked_op: str | None = None
    wall_s: float = 0.0
    stdout_tail: str = ""
    isolation: list[str] = field(default_factory=list)  # the layers that were active for this check

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
