"""The supervisor: one per workspace; queues, admits, launches and reaps jobs.

It owns nothing the logs do not hold: ``core`` is the daemon (lock, hash-chained journal,
rounds, admission, launch), ``commands`` the run, approve, cancel and retry commands that
arrive as files in the owner-only ``commands/`` inbox.
"""

from engine.supervisor.core import BAD_INPUT, Supervisor, SupervisorRunning

__all__ = ["BAD_INPUT", "Supervisor", "SupervisorRunning"]
