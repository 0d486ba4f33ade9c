"""What every view shares: the header line, the footer, and a hook for new data."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

from pmat_tui.console import Console
from pmat_tui.guard import Guarded
from pmat_tui.model import ConsoleModel
from pmat_tui.widgets.header_bar import HeaderBar

FIRST_ACTIONS = ("help", "quit")  # shown first: a narrow footer cuts from the right
VIEW_KEYS = "12345"  # one footer entry, "1-5 views"


class KeyFooter(Footer):
    """Textual's footer with ``?`` and ``q`` first and the five view keys as one entry, so that
    help and quit stay visible at any width; recomposed only when the keys it shows change
    (focus moves and screen switches announce the same bindings again, and each recompose
    mounts every key anew)."""

    _shown: tuple | None = None

    def compose(self) -> ComposeResult:
        if not self._bindings_ready:
            return
        shown, seen = [], set()
        for _, binding, enabled, tooltip in self.screen.active_bindings.values():
            if binding.show and binding.action not in seen:
                seen.add(binding.action)
                shown.append((binding, enabled, tooltip))
        first = sorted((b for b in shown if b[0].action in FIRST_ACTIONS), key=lambda b: FIRST_ACTIONS.index(b[0].action))
        views = [b for b in shown if b[0].key in VIEW_KEYS]
        rest = [b for b in shown if b not in first and b not in views]
        if views:
            first.append((views[0][0], True, "switch view: 1 DAG, 2 Jobs, 3 Memory, 4 Gates, 5 Log"))
        self.styles.grid_size_columns = len(first) + len(rest)
        for binding, enabled, tooltip in first + rest:
            is_views = bool(views) and binding is views[0][0]
            yield FooterKey(binding.key, "1-5" if is_views else self.app.get_key_display(binding),
                            "views" if is_views else binding.description, binding.action,
                            disabled=not enabled, tooltip=tooltip).data_bind(compact=Footer.compact)

    def bindings_changed(self, screen: Screen) -> None:
        shown = tuple((b.key, b.description, b.action, enabled, tooltip)
                      for _, b, enabled, tooltip in screen.active_bindings.values() if b.show)
        if shown == self._shown:
            return
        if screen.app.app_focus and self.is_attached and screen is self.screen:  # the footer recomposes
            self._shown = shown
        super().bindings_changed(screen)


class ViewScreen(Guarded, Screen):
    """A mode of the console. Subclasses compose ``body()`` and implement ``update_view``."""

    VIEW = "view"

    @property
    def papp(self) -> Console:
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

    def safe_update(self, structural: bool) -> None:
        """``update_view`` from outside the view's own handlers (the app's refresh)."""
        try:
            self.update_view(structural)
        except Exception as exc:  # noqa: BLE001 - see pmat_tui.guard
            self.papp.view_failed(self.VIEW, exc)

    def on_screen_resume(self) -> None:
        self.update_view(True)

    def update_view(self, structural: bool) -> None:
        """Show the model's current state; ``structural`` when the overview was rebuilt. The
        header redraws only when its text changed (the time left counts down with the ETAs)."""
        self.query_one(HeaderBar).show(self.model, self.VIEW)
