"""The pmat console: a client of the supervisor that reads logs and writes commands.

It never owns a job (docs/ARCHITECTURE.md, principle 6): quitting, a closed terminal (SIGHUP) or an
SSH drop leave every job and the supervisor running. When new events are folded in is
``pmat_tui.watcher``'s to decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen

from engine.inbox import COMMANDS
from engine.memory import MemorySnapshot
from engine.spec import PipelineSpec
from engine.workspace import Workspace
from pmat_tui.guard import Guarded, console_error_log, log_failure
from pmat_tui.model import ConsoleModel
from pmat_tui.palette import palette_commands
from pmat_tui.screens.base import ViewScreen
from pmat_tui.screens.dag import DagScreen
from pmat_tui.watcher import MIN_REFRESH_S, FilesChanged, Watcher
from pmat_tui.widgets.header_bar import HeaderBar

CHECK_NICE = 10  # the background `pmat check` runs at this niceness
READONLY_KEYS = {"r": "run", "a": "approve", "c": "cancel", "t": "retry"}
VIEWS_HELP = "views: DAG, Jobs, Memory, Gates, Log"
LOGS_HELP = "the selected stage's log / its job's stdout and stderr (tracebacks)"
FOLD_INLINE_BYTES = 32 << 20  # bigger logs are folded in a thread behind a "reading" header


class SpecProblem(Message):
    """The full spec check failed (a stage parameter the quick load did not check)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class Loaded(Message):
    """The initial fold of the logs finished."""


LAZY_VIEWS = {"jobs": "JobsScreen", "memory": "MemoryScreen", "gates": "GatesScreen", "log": "LogScreen"}


def _view(mode: str) -> Callable[[], Screen]:
    """A view other than the DAG, imported when first shown: the first frame (the DAG) does
    not wait for the other views' modules."""
    return lambda: getattr(importlib.import_module(f"pmat_tui.screens.{mode}"), LAZY_VIEWS[mode])()


class PmatApp(Guarded, App):
    CSS_PATH = Path(__file__).parent / "app.tcss"
    TITLE = "pmat"
    MODES = {"dag": DagScreen, **{mode: _view(mode) for mode in LAZY_VIEWS}}
    DEFAULT_MODE = "dag"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    # the help screen lists these in this order, one row per tooltip (pmat_tui.screens.help)
    BINDINGS = [
        Binding("1", "switch_mode('dag')", "DAG", tooltip=VIEWS_HELP),
        Binding("2", "switch_mode('jobs')", "Jobs", tooltip=VIEWS_HELP),
        Binding("3", "switch_mode('memory')", "Mem", tooltip=VIEWS_HELP),
        Binding("4", "switch_mode('gates')", "Gates", tooltip=VIEWS_HELP),
        Binding("5", "switch_mode('log')", "Log", tooltip=VIEWS_HELP),
        Binding("escape", "back", "Back", show=False, key_display="Esc",
                tooltip="back: closes a dialog or the log filter, else returns to the view before"),
        Binding("r", "run", "Run", tooltip="run the selected stage (with its upstream)"),
        Binding("a", "approve", "Approve",
                tooltip="approve the selected gated stage (failing criteria need a typed override reason)"),
        Binding("c", "cancel", "Cancel", tooltip="cancel the selected stage's job (asks first)"),
        Binding("t", "retry", "Retry", tooltip="retry a failed, crashed or cancelled stage"),
        Binding("l", "open_log", "Log", tooltip=LOGS_HELP),
        Binding("o", "open_out", "Out", show=False, tooltip=LOGS_HELP),
        Binding("question_mark", "help", "Help", tooltip="this help"),
        Binding("q", "quit", "Quit", tooltip="quit (jobs keep running; the supervisor keeps working)"),
    ]

    def __init__(
        self,
        ws: Workspace,
        spec: PipelineSpec | None = None,
        *,
        readonly: bool = False,
        now: Callable[[], float] | None = None,
        memory_probe: Callable[[], MemorySnapshot] | None = None,
        watch: bool = True,
        notice: str | None = None,
    ) -> None:
        super().__init__()
        self.model = ConsoleModel(ws, spec, readonly=readonly, now=now, memory_probe=memory_probe)
        self.selected_stage: str | None = None
        self.log_target: str | None = "supervisor"
        self._watch_enabled = watch
        self._notice = notice
        self._announced: dict[str, str | None] = {}  # what _announce last said, by topic
        self.watcher = Watcher(self.model.ws.logs_dir, self.post_message)
        self.refreshes = 0
        self.loaded = False
        self._last_error: str | None = None
        self.view_errors: list[str] = []  # every failure a view reported (tests read it)
        self._mode_history: list[str] = []  # views shown before, for Esc
        if readonly:
            self.sub_title = "read-only"

    # -- lifecycle ------------------------------------------------------------------
    def on_load(self) -> None:
        """Before the first screen is composed: fold small logs right away, so that the
        widgets are built with their final labels and the first frame is the full one."""
        self._log_sizes = self.model.log_sizes()
        if self._log_sizes[1] <= FOLD_INLINE_BYTES:
            self.model.state.refresh()
            self.model.refresh(force=True)

    def on_mount(self) -> None:
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._hangup)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (tests): nothing to hang up
        if self.model.overview is not None:
            self.on_loaded(Loaded())
            return
        for header in self.screen.query(HeaderBar):
            header.loading(self.model.spec.name, *self._log_sizes)
        threading.Thread(target=self._initial_fold, name="pmat-fold", daemon=True).start()

    def _initial_fold(self) -> None:
        """The first read of every log, off the UI thread: a 1 GB log takes a while, and the
        console must still answer (q, SIGHUP) without waiting for it (a daemon thread, not a
        worker that exit would wait for). Nothing else touches the state until Loaded."""
        self.model.state.refresh()
        self.post_message(Loaded())

    def on_loaded(self, _: Loaded) -> None:
        if self.loaded:
            return
        self.loaded = True
        self.do_refresh(force=self.model.overview is None, redraw=True)
        if self._watch_enabled:
            self.set_interval(MIN_REFRESH_S, self._refresh_tick)
            self.call_after_refresh(self._start_background)  # behind the first frame, not ahead of it
        if self._notice:
            self.notify(self._notice, severity="warning", timeout=10)

    def _start_background(self) -> None:
        """The file watcher and the full spec check, once the first frame is on screen."""
        self._watch()
        threading.Thread(target=self._check_spec, name="pmat-check", daemon=True).start()

    def _check_spec(self) -> None:
        """The stage-parameter check the first frame skipped, in its own process: it imports
        every stage module (torch, transformers: seconds of CPU), which the console itself never
        needs. It runs niced, so that it never takes a core from the console or the jobs."""
        proc = subprocess.Popen([sys.executable, "-m", "engine.cli.main", "check", str(self.model.ws.spec_path)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, proc.pid, CHECK_NICE)
        _, err = proc.communicate()
        if proc.returncode != 0:
            self.post_message(SpecProblem((err.strip().splitlines() or ["pmat check failed"])[-1]))

    def on_spec_problem(self, message: SpecProblem) -> None:
        self.notify(message.text, title="pipeline spec", severity="error", timeout=60)

    def _hangup(self) -> None:
        """The terminal went away: leave quietly (the jobs never depended on us)."""
        self.watcher.stop()
        self.exit(return_code=0)

    def on_unmount(self) -> None:
        self.watcher.stop()

    @work(thread=True, exclusive=True, group="watch")
    def _watch(self) -> None:
        """Wake the console when a log under the workspace changes (inotify via watchfiles)."""
        self.watcher.run()

    def on_files_changed(self, message: FilesChanged) -> None:
        self.watcher.received(message)
        self.request_refresh()

    # -- refreshing -----------------------------------------------------------------
    def request_refresh(self) -> None:
        """Fold new events now, or at the next tick if the last fold was under ``MIN_REFRESH_S`` ago."""
        if self.loaded and self.watcher.due_now():
            self.do_refresh()

    def _refresh_tick(self) -> None:
        if self.watcher.tick():
            self.do_refresh()

    def do_refresh(self, force: bool = False, redraw: bool = False) -> None:
        """Fold new events and show them; ``redraw`` shows everything even if nothing changed."""
        self.watcher.folding()
        self.refreshes += 1
        try:
            changed, structural = self.model.refresh(force=force)
            self.watcher.folded(changed and not structural)
            structural |= redraw
        except (OSError, ValueError, KeyError) as exc:  # a file read mid-replace, a bad record: say so, keep going
            message = f"could not read the workspace: {type(exc).__name__}: {exc}"
            if message != self._last_error:
                self._last_error = message
                self.notify(message, severity="error", timeout=10)
            return
        self._last_error = None
        self._announce()
        if not self._screen_stacks.get(self._current_mode):
            return  # the app is closing (a timer ticked after the last screen left): nothing to show
        for sent, what, reason in self.model.answers():
            if what == "rejected":
                self.notify(f"{sent.command} {sent.target} rejected: {reason}", severity="error", timeout=8)
            else:
                self.notify(f"{sent.command} {sent.target}: done", timeout=4)
        screen = self.screen
        if isinstance(screen, ViewScreen):
            screen.safe_update(structural)
        elif structural:
            for s in self.screen_stack:
                if isinstance(s, ViewScreen):
                    s.safe_update(True)

    def _announce(self) -> None:
        """A dead supervisor (why, how to restart it) and damaged logs: said as soon as the model
        sees them, and again only when what there is to say changes."""
        ov = self.model.overview
        if ov is None:
            return
        down = ov.supervisor_down and ov.supervisor_down + ("" if self.model.readonly else
                                                            "; commands wait until one runs")
        for topic, text in (("supervisor", down), ("logs", ov.log_warning())):
            if text and text != self._announced.get(topic):
                self.notify(text, title=topic, severity="error", timeout=30)
            self._announced[topic] = text

    def view_failed(self, view: str, exc: BaseException) -> None:
        """A view's code failed: one line on screen, once per distinct error (a line drawn at
        every repaint fails the same way each time); the traceback goes to the error log."""
        message = f"{view} view: {type(exc).__name__}: {str(exc)[:160]} (traceback in {console_error_log()})"
        if message in self.view_errors:
            return
        self.view_errors.append(message)
        log_failure(view, exc)
        if message != self._last_error:
            self._last_error = message
            self.notify(message, severity="error", timeout=10)

    # -- actions --------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in COMMANDS and self.model.readonly:
            return False  # read-only: the actions do not exist
        return True

    def _stage(self) -> str | None:
        if not self.selected_stage:
            self.notify("Select a stage first (DAG view: arrows).", severity="warning")
        return self.selected_stage

    def _send(self, command: str, target: str, **args) -> None:
        try:
            self.model.send(command, target, **args)
        except PermissionError as exc:
            self.notify(str(exc), severity="error")
            return
        self.notify(f"{command} {target}: sent to the supervisor", timeout=3)
        self.request_refresh()

    def action_run(self, stage: str | None = None) -> None:
        stage = stage or self._stage()
        if stage:
            self._send("run", stage)

    def action_retry(self, stage: str | None = None) -> None:
        stage = stage or self._stage()
        if stage:
            self._send("retry", stage)

    def action_cancel(self, stage: str | None = None) -> None:
        stage = stage or self._stage()
        if not stage:
            return
        job = self.model.job_of(stage)
        status = self.model.rows[stage].status if stage in self.model.rows else "pending"
        if status not in ("running", "queued"):
            self.notify(f"{stage} is {status}: nothing to cancel", severity="warning")
            return
        grace = self.model.spec.settings.cancel_grace_s
        what = f"job {job}" if status == "running" and job else f"queued stage {stage}"
        question = f"Cancel {what}?\nSIGTERM now, SIGKILL after {grace:g} s if it has not stopped."
        from pmat_tui.screens.confirm import ConfirmScreen

        def answered(yes: bool | None) -> None:
            if yes:
                self._send("cancel", job if status == "running" and job else stage)

        self.push_screen(ConfirmScreen(question), answered)

    def action_approve(self, stage: str | None = None) -> None:
        stage = stage or self._stage()
        if not stage:
            return
        if self.model.spec.stages[stage].approval != "required":
            self.notify(f"{stage} needs no approval", severity="warning")
            return
        evidence = self.model.evidence(stage)
        gates = [g for g in self.model.gates() if stage in g.gated_stages]
        from pmat_tui.screens.approve import ApproveScreen

        def answered(reason: str | None) -> None:
            if reason is not None:  # "" approves passing gates; a reason overrides failing ones
                self._send("approve", stage, evidence=evidence, **({"override": reason} if reason else {}))

        self.push_screen(ApproveScreen(stage, evidence, gates), answered)

    def action_open_log(self, stage: str | None = None) -> None:
        stage = stage or self.selected_stage
        job = self.model.job_of(stage) if stage else None
        self.log_target = job or "supervisor"
        if self.current_mode == "log":
            self.screen.safe_update(True)  # type: ignore[attr-defined]
        else:
            self.switch_mode("log")

    def action_open_out(self, stage: str | None = None) -> None:
        """The selected stage's job's stdout/stderr (where tracebacks go)."""
        stage = stage or self.selected_stage
        job = self.model.job_of(stage) if stage else None
        self.log_target = f"{job or 'supervisor'}:out"
        if self.current_mode == "log":
            self.screen.safe_update(True)  # type: ignore[attr-defined]
        else:
            self.switch_mode("log")

    def action_back(self) -> None:
        """Esc: back to the view shown before this one (the DAG at the start)."""
        while self._mode_history and self._mode_history[-1] == self.current_mode:
            self._mode_history.pop()
        target = self._mode_history.pop() if self._mode_history else "dag"
        if target != self.current_mode:
            self.switch_mode(target, remember=False)

    def switch_mode(self, mode: str, remember: bool = True):  # noqa: ANN201 - Textual's AwaitComplete
        if remember and self.current_mode != mode:
            self._mode_history = [*self._mode_history[-9:], self.current_mode]
        return super().switch_mode(mode)

    def on_key(self, event) -> None:  # noqa: ANN001 - textual.events.Key
        """A key whose action read-only mode refuses: say so (the footer hides it)."""
        action = READONLY_KEYS.get(event.key)
        if action and self.model.readonly:
            self.notify(f"read-only console: {event.key} ({action}) is refused; open `pmat tui` without --readonly",
                        severity="warning", timeout=4)

    def action_help(self) -> None:
        from pmat_tui.screens.help import HelpScreen

        self.push_screen(HelpScreen(self.model.readonly))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield from palette_commands(self)

    def show_log(self, target: str) -> None:
        """The log view on ``target`` (a job id, ``supervisor``, or either with ``:out``)."""
        self.log_target = target
        self.switch_mode("log")
        from pmat_tui.screens.log import LogScreen  # loaded by the switch

        if isinstance(self.screen, LogScreen):
            self.screen.safe_update(True)
