"""Execution of model-written programs, with verdicts the program cannot forge.

Processes, per pool slot:

- the manager (``pool.SandboxPool``, in the caller) dispatches jobs and enforces the
  wall clock by SIGKILL of process groups;
- a warm template (``template.py``), started in its own network namespace where the OS
  allows, pre-imports what programs use and runs each check's tests itself
  (``runner.py``): it never executes program code;
- its zygote (``zygote.py``), forked from the warm template once, forks one confined
  child per check as soon as the previous one is reaped: it never sees a job, so no
  child can find its own job in memory;
- the child (``child.py``): own session and group, temp cwd, rlimits, its own uid when
  the pool runs as root (RLIMIT_NPROC 1: no fork, no threads), Landlock where the kernel
  has it (``landlock.py``: writes only beneath its directory, no exec, no signals out),
  an audit hook that ends it on a forbidden operation. It loads the program and answers
  calls.

Only plain data crosses the socket (``wire.py``), so asserts compare values the trusted
side built itself, with its own builtins and modules. A verdict counts only when the
template's report carries the nonce the manager gave it for that job.
"""
