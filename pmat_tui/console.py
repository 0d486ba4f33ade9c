"""What the views and the command palette use of the console app. They depend on this
protocol, not on ``pmat_tui.app`` (which imports them): ``PmatApp`` implements it."""

from __future__ import annotations

from typing import Any, Protocol

from pmat_tui.model import ConsoleModel


class Console(Protocol):
    """The app as its views see it: the model, the selection, the log shown, and the actions."""

    MODES: dict[str, Any]
    model: ConsoleModel
    selected_stage: str | None
    log_target: str | None

    def switch_mode(self, mode: str, remember: bool = True) -> Any: ...  # noqa: ANN401 - Textual's AwaitComplete

    def view_failed(self, view: str, exc: BaseException) -> None: ...

    def show_log(self, target: str) -> None: ...

    def action_back(self) -> None: ...

    def action_open_log(self, stage: str | None = None) -> None: ...

    def action_run(self, stage: str | None = None) -> None: ...

    def action_retry(self, stage: str | None = None) -> None: ...

    def action_cancel(self, stage: str | None = None) -> None: ...

    def action_approve(self, stage: str | None = None) -> None: ...
