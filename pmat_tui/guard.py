"""No data change can end the console: a failure in a view's code becomes a one-line notice.

``Guarded`` goes first in the bases of the app and of each console widget and screen: each
message it handles (keys and the actions they bind, mount, its children's messages) runs
under a guard, and the pump keeps going (Textual would end the app). ``safe_lines`` does the same for a line-API widget's ``render_line``,
which runs in the compositor: a line that cannot be drawn is drawn blank.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import traceback
from asyncio import CancelledError
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.message import Message
from textual.strip import Strip


def console_error_log() -> Path:
    """Where the console keeps the tracebacks of its views: outside the workspace (a read-only
    console writes nothing there, and the watcher would wake for each one)."""
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "pmat" / "console-errors.log"


def log_failure(view: str, exc: BaseException) -> None:
    """Append ``exc``'s traceback to the console's error log (best effort)."""
    path = console_error_log()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fh.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {view} view\n")
            traceback.print_exception(exc, file=fh)


def report(node: Any, exc: BaseException) -> None:
    """Hand ``exc`` to the console app (its notice and error log), naming the view."""
    app = node.app
    try:
        view = getattr(app.screen, "VIEW", type(app.screen).__name__)
    except Exception:  # noqa: BLE001 - no screen (closing): name the widget
        view = type(node).__name__
    failed = getattr(app, "view_failed", None)
    if failed is None:
        raise exc
    failed(view, exc)


class Guarded:
    """Mixin: every handled message runs under a guard."""

    async def _dispatch_message(self, message: Message) -> None:
        try:
            await super()._dispatch_message(message)  # type: ignore[misc]
        except CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a view does wrong, the console stays up
            report(self, exc)


def safe_lines(render_line: Callable[[Any, int], Strip]) -> Callable[[Any, int], Strip]:
    """``render_line`` that draws a blank line (and reports once) instead of raising."""

    @functools.wraps(render_line)
    def wrapper(self: Any, y: int) -> Strip:
        try:
            return render_line(self, y)
        except Exception as exc:  # noqa: BLE001 - see Guarded
            report(self, exc)
            return Strip.blank(self.size.width)

    return wrapper
