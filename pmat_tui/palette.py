"""The command palette (ctrl+p): every view, every log, and every action on every stage."""

from __future__ import annotations

from collections.abc import Iterator

from textual.app import SystemCommand

from pmat_tui.console import Console


def palette_commands(app: Console) -> Iterator[SystemCommand]:
    """Views, logs, then run/cancel/retry/approve per stage (none of those when read-only)."""
    for mode in app.MODES:
        yield SystemCommand(f"View: {mode}", f"switch to the {mode} view", lambda m=mode: app.switch_mode(m))
    yield SystemCommand("Log: supervisor journal", "the supervisor's journal", lambda: app.show_log("supervisor"))
    for stage, entry in app.model.spec.stages.items():
        if app.model.job_of(stage):
            yield SystemCommand(f"Log: {stage}", f"log of {app.model.job_of(stage)}", lambda s=stage: app.action_open_log(s))
        if app.model.readonly:
            continue
        yield SystemCommand(f"Run: {stage}", "request the stage with its upstream", lambda s=stage: app.action_run(s))
        yield SystemCommand(f"Cancel: {stage}", "cancel its job (asks first)", lambda s=stage: app.action_cancel(s))
        yield SystemCommand(f"Retry: {stage}", "run it again after a failure", lambda s=stage: app.action_retry(s))
        if entry.approval == "required":
            yield SystemCommand(f"Approve: {stage}", "review the evidence and approve", lambda s=stage: app.action_approve(s))
