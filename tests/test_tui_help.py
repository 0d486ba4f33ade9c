"""The help screen comes from the app's bindings: every key the app binds is listed with its
help text, a key added to the bindings shows up by itself, and read-only leaves out what it refuses."""

from __future__ import annotations

import io
import time

import pytest
from rich.console import Console
from rich.table import Table
from textual.binding import Binding
from textual.widgets import Static

from pmat_tui.app import PmatApp
from pmat_tui.fixture import FIXTURE_NOW, fixture_memory, write_fixture
from pmat_tui.screens.help import HelpScreen, key_rows
from pmat_tui.screens.log import LogScreen


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory):
    return write_fixture(tmp_path_factory.mktemp("help") / "fx")


class WithExtraKeys(PmatApp):
    BINDINGS = [*PmatApp.BINDINGS, Binding("x", "bell", "Bell", tooltip="ring the bell"),
                Binding("ctrl+b", "bell", "Beep")]


def _listed(app: PmatApp) -> dict[str, str]:
    """Each key display -> the help text of its row (a screen's row, "Log view: f / ...", holds that
    screen's keys, not the app's)."""
    return {key: text for keys, text in key_rows(app) if ": " not in keys
            for key in keys.split(" ")}


def test_every_binding_of_the_app_is_in_the_help(ws) -> None:
    app = PmatApp(ws, watch=False)
    listed = _listed(app)
    for b in Binding.make_bindings(PmatApp.BINDINGS):
        assert listed.get(app.get_key_display(b)) == (b.tooltip or b.description), b
    assert listed["?"] == "this help" and listed["Esc"].startswith("back")
    assert ("1 2 3 4 5", "views: DAG, Jobs, Memory, Gates, Log") in key_rows(app)


def test_every_key_of_the_log_view_is_in_the_help(ws) -> None:
    """Its row is read from LogScreen's bindings (the hand-written row had left out `o`, stdout)."""
    app = PmatApp(ws, watch=False)
    keys, does = next(r for r in key_rows(app) if r[0].startswith("Log view: "))
    for b in Binding.make_bindings(LogScreen.BINDINGS):
        if b.key != "escape":
            assert app.get_key_display(b) in keys.split()[2:] and (b.tooltip or b.description) in does, b


def test_a_binding_added_to_the_app_shows_in_the_help(ws) -> None:
    app = WithExtraKeys(ws, watch=False)
    listed = _listed(app)
    assert listed["x"] == "ring the bell" and listed["^b"] == "Beep"  # no tooltip: the footer's description


def test_read_only_help_leaves_out_the_refused_actions(ws) -> None:
    listed = _listed(PmatApp(ws, readonly=True, watch=False))
    assert not {"r", "a", "c", "t"} & set(listed)
    assert {"1", "Esc", "l", "o", "?", "q"} <= set(listed)


async def test_the_help_screen_shows_the_rows(ws, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    app = WithExtraKeys(ws, now=lambda: FIXTURE_NOW, memory_probe=fixture_memory, watch=False)
    async with app.run_test(size=(120, 60)) as pilot:
        while not app.loaded:
            await pilot.pause(0.01)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        table = next(s.content for s in app.screen.query(Static) if isinstance(s.content, Table))
        console = Console(width=200, record=True, file=io.StringIO())
        console.print(table)
        lines = [" ".join(line.split()) for line in console.export_text().splitlines()]
        assert lines[1:] == [f"{keys} {does}" for keys, does in key_rows(app)]
        assert lines[-2:] == ["x ring the bell", "^b Beep"] and "? this help" in lines
