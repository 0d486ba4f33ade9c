"""Execution of model-written programs, with verdicts the program cannot forge.

Processes, per pool slot:

- the manager (``pool.SandboxPool``, in the caller) dispatches jobs (``jobs.py``) to its
  slots (``slot.py``), enforces the wall clock by SIGKILL, and turns anything that goes wrong
  into a verdict;
- a warm template (``template.py``), started inside bubblewrap (``bwrap.py``: its own
  root without site-packages, home or workspace; pid, network and IPC namespaces; the
  work area a size-limited tmpfs) where the host has it, else in a network namespace. It
  pre-imports what programs use (numpy included) and runs each check's tests itself
  (``runner.py``): it never executes program code;
- its zygote (``zygote.py``), forked from the warm template once, forks one confined
  child per check as soon as the previous one is reaped and its tree removed
  (``tree.py``: any depth, any modes): it never sees a job;
- the child (``child.py``): own session, temp cwd, rlimits, its own uid when the pool runs
  as root, no-new-privs, Landlock (``landlock.py``: writes only beneath its directory, no
  exec, no signals out), a seccomp filter (``seccomp.py``: no processes, threads, sockets,
  memfd, ptrace, pidfd, namespaces), a scrubbed environment, and an audit hook
  (``hook.py``) that the program cannot reconfigure. It loads the program and answers calls.

Only plain data crosses the socket (``wire.py``), materialised as the types the program
returned and decoded under budgets, so asserts compare values the trusted side built
itself. A verdict counts only when the template's report carries the nonce the manager
gave it for that job; each names the isolation layers that were active (``isolation.py``:
which ones this host gives, and what is missing).

Tests that come with a ``pmat sandbox`` file are read as data (``literal.py``), never run.
"""

from __future__ import annotations

from typing import Any


def isolation_layers() -> dict[str, Any]:
    """The isolation layers a pool started now on this host would have (``layers``), and what
    is missing (``missing``), and whether any kernel-enforced layer is there (``kernel``),
    without starting one."""
    from engine.sandbox.isolation import isolation_layers as layers

    return layers()


def check_line() -> str | None:
    """One line for ``pmat check`` when an isolation layer is missing here; None when all are."""
    from engine.sandbox.isolation import check_line as line

    return line()
