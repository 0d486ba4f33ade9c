"""What every view shares: the header line, the footer, and a hook for new data."""

from __future__ import annotations

from asyncio import CancelledError
from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer

from pmat_tui.widgets.header_bar import HeaderBar

if TYPE_CHECKING:
    from pmat_tui.app import PmatApp
    from pmat_tui.model import ConsoleModel


class KeyFooter(Footer):
    """Textual's footer, recomposed only when the keys it shows change: focus moves and screen
    switches announce the same bindings again, and each recompose mounts every key anew (three
    times before a console's first frame)."""

    _shown: tuple | None = None

    def bindings_changed(self, screen: Screen) -> None:
        shown = tuple((b.key, b.description, b.action, enabled, tooltip)
                      for _, b, enabled, tooltip in screen.active_bindings.values() if b.show)
        if shown == self._shown:
            return
        if screen.app.app_focus and self.is_attached and screen is self.screen:  # the footer recomposes
            self._shown = shown
        super().bindings_changed(screen)


class ViewScreen(Screen):
    """A mode of the console. Subclasses compose ``body()`` and implement ``update_view``."""

    VIEW = "view"

    @property
    def papp(self) -> PmatApp:
        return self.app  # type: ignore[return-value]

    @property
    def model(self) -> ConsoleModel:
        return self.papp.model

    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        yield from self.body()
        yield KeyFooter(compact=True, show_command_palette=False)

    def body(self) -> ComposeResult:
        yield from ()

    async def _dispatch_message(self, message: Message) -> None:
        """Every handler of the view (keys, its widgets' messages, mount): a failure becomes a
        one-line notice, and the view keeps answering (Textual would end the app)."""
        try:
            await super()._dispatch_message(message)
        except CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a view does wrong, the console stays up
            self.papp.view_failed(self.VIEW, exc)

    def safe_update(self, structural: bool) -> None:
        """``update_view`` from outside the view's own handlers (the app's refresh)."""
        try:
            self.update_view(structural)
        except Exception as exc:  # noqa: BLE001 - see _dispatch_message
            self.papp.view_failed(self.VIEW, exc)

    def on_screen_resume(self) -> None:
        self.update_view(True)

    def update_view(self, structural: bool) -> None:
        """Show the model's current state; ``structural`` when the overview was rebuilt."""
        if structural:
            self.query_one(HeaderBar).show(self.model, self.VIEW)
