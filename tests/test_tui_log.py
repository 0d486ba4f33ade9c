"""The log view: a lazy tail by byte offset, follow/pause, filter, pretty JSON, rotation."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import pmat_tui.logtail as logtail
from pmat_tui.app import PmatApp
from pmat_tui.fixture import FIXTURE_NOW, fixture_memory, write_fixture
from pmat_tui.logtail import LogTail
from pmat_tui.widgets.log_view import LogView


def _lines(t: LogTail) -> list[str]:
    return [t.line(i).decode() for i in range(len(t))]


def test_tail_loads_back_appends_and_restarts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logtail, "BLOCK", 7)  # lines straddle blocks
    p = tmp_path / "a.jsonl"
    lines = [f"line{i}" * (i % 3 + 1) for i in range(50)]
    p.write_text("\n".join(lines) + "\npartial")
    t = LogTail(p, initial=5)
    assert _lines(t) == lines[-5:]  # the partial last line waits for its newline
    assert t.load_back(10) == 10 and _lines(t) == lines[-15:]
    t.load_back(100)
    assert _lines(t) == lines and t.at_top and t.load_back(5) == 0
    with open(p, "a") as fh:
        fh.write("X\nnew1\nnew2\nhalf")
    assert t.poll() == 3 and _lines(t)[-3:] == ["partialX", "new1", "new2"]
    p.write_text("a\nb\n")  # truncated
    assert t.poll() == -1 and _lines(t) == ["a", "b"] and t.resets == 1
    q = tmp_path / "b.jsonl"
    q.write_text("c\n")
    os.replace(q, p)  # rotated: a new inode of the same size class
    assert t.poll() == -1 and _lines(t) == ["c"] and t.resets == 2


def test_big_log_opens_by_its_tail(tmp_path: Path) -> None:
    p = tmp_path / "big.jsonl"
    line = json.dumps({"ts": 1.0, "kind": "metric", "name": "loss", "value": 0.5, "pad": "x" * 200}) + "\n"
    with open(p, "w") as fh:
        fh.write(line * 250_000)  # ~57 MB
    t0 = time.perf_counter()
    t = LogTail(p, initial=200)
    took = time.perf_counter() - t0
    assert len(t) == 200 and t.head == p.stat().st_size - 200 * len(line)
    assert took < 0.05, f"opening a {p.stat().st_size >> 20} MB log took {took:.3f} s"


@pytest.fixture
def app(tmp_path: Path) -> PmatApp:
    ws = write_fixture(tmp_path / "fx")
    app = PmatApp(ws, readonly=True, now=lambda: FIXTURE_NOW, memory_probe=fixture_memory)
    app.log_target = "sft.1"
    return app


def _append(path: Path, n: int, kind: str = "progress") -> None:
    with open(path, "a") as fh:
        for i in range(n):
            fh.write(json.dumps({"ts": time.time(), "kind": kind, "name": "loss", "value": i, "step": 1000 + i}) + "\n")


async def _until(pilot, cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await pilot.pause(0.05)


async def test_follow_pause_filter_pretty_rotate(app: PmatApp) -> None:
    path = app.model.ws.job_log("sft.1")
    async with app.run_test(size=(80, 24)) as pilot:
        await _until(pilot, lambda: app.loaded)
        await pilot.press("5")
        view = app.screen.query_one(LogView)
        n0 = view.rows
        assert n0 > 0 and view.follow and view.cursor == n0 - 1
        _append(path, 3)  # noticed through watchfiles (or the polling fallback)
        await _until(pilot, lambda: view.rows == n0 + 3)
        assert view.cursor == n0 + 2  # following: the cursor rides the end
        await pilot.press("f")
        assert not view.follow
        _append(path, 2)
        await _until(pilot, lambda: view.rows == n0 + 5)
        assert view.cursor == n0 + 2  # paused: new lines do not move it
        await pilot.press("up", "up")
        assert view.cursor == n0
        await pilot.press("slash")
        await pilot.press(*"rewards", "enter")
        assert view.filter_text == "rewards" and 0 < view.rows < n0
        assert all("rewards" in view._text(view._line_of(r)).plain for r in range(view.rows))  # as shown
        await pilot.press("p")
        pretty = app.screen.query_one("#log-pretty")
        assert pretty.display
        await _until(pilot, lambda: any('"name": "rewards/margins"' in t for t in _screen(app)))
        path.write_text(json.dumps({"ts": 1.0, "kind": "job_started"}) + "\n")  # truncated under us
        await _until(pilot, lambda: view.tail.resets == 1)
        await pilot.press("slash", "ctrl+u", "enter")  # clear the filter
        assert view.rows == 1 and b"job_started" in view.cursor_raw()
        assert "file replaced" in "\n".join(s.text for s in app.screen._compositor.render_strips())


async def test_home_loads_older_lines(app: PmatApp, monkeypatch: pytest.MonkeyPatch) -> None:
    import pmat_tui.widgets.log_view as lv

    monkeypatch.setattr(lv, "LOAD_BACK", 10)
    path = app.model.ws.job_log("sft.1")
    total = sum(1 for _ in open(path))
    async with app.run_test(size=(80, 24)) as pilot:
        await _until(pilot, lambda: app.loaded)
        await pilot.press("5")
        view = app.screen.query_one(LogView)
        view.open(path)
        view.people = False  # every event a line: the count is the file's
        view.tail.starts = view.tail.starts[-20:]  # pretend only the last 20 lines were indexed
        view._reset_view()
        view.cursor = 0
        await pilot.press("up")
        assert view.rows == 30 and view.cursor == 9  # ten older lines; the cursor stays on its line
        for _ in range(total):
            await pilot.press("home")
            if view.tail.at_top:
                break
        assert view.rows == total and view.tail.line(0).startswith(b'{"ts"')


async def test_palette_opens_a_log_without_the_mouse(app: PmatApp) -> None:
    async with app.run_test(size=(80, 24)) as pilot:
        await _until(pilot, lambda: app.loaded)
        await pilot.press("ctrl+p")
        await pilot.press(*"Log: sample", "enter")
        await _until(pilot, lambda: app.current_mode == "log")
        view = app.screen.query_one(LogView)
        assert app.log_target == "sample.1" and view.path == app.model.ws.job_log("sample.1")
        await pilot.press("question_mark")
        assert "pmat console" in "\n".join(s.text for s in app.screen._compositor.render_strips())
        await pilot.press("escape", "1")
        assert app.current_mode == "dag"


async def test_quit_during_first_fold_does_not_wait(app: PmatApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """A huge log folds in a daemon thread; the console shows that it reads and quits at once."""
    import threading

    from engine.state import PipelineState

    release = threading.Event()
    real = PipelineState.refresh

    def slow(self: PipelineState) -> bool:
        release.wait(30)
        return real(self)

    monkeypatch.setattr(PipelineState, "refresh", slow)
    monkeypatch.setattr("pmat_tui.app.FOLD_INLINE_BYTES", 0)  # fold these small logs as if they were huge
    t0 = time.monotonic()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.2)
        assert not app.loaded
        assert "reading 5 job logs" in "\n".join(s.text for s in app.screen._compositor.render_strips())
        await pilot.press("q")
    assert time.monotonic() - t0 < 5
    release.set()


async def test_bad_stage_parameter_is_reported_after_the_first_frame(tmp_path: Path) -> None:
    """The console opens without importing every stage module; `pmat check` runs behind it."""
    import yaml

    from engine.workspace import Workspace

    ws = Workspace(tmp_path / "ws").init()
    ws.spec_path.write_text(yaml.safe_dump({"name": "bad", "stages": {"s": {
        "kind": "command", "params": {"argv": ["true"], "bogus": 1}, "memory_gb": 0.1, "duration_h": 0.1}}}))
    app = PmatApp(ws, readonly=True)
    async with app.run_test(size=(100, 30)) as pilot:
        await _until(pilot, lambda: app.loaded)
        await _until(pilot, lambda: any("stages.s.params.bogus: unknown key" in n.message and n.severity == "error"
                                        for n in app._notifications), timeout=30)


def test_fold_reads_odd_lines_as_json_loads_does_and_sees_new_logs(tmp_path: Path) -> None:
    """The console's fold (engine.state): its fast JSON path and its cached listing of job logs."""
    from engine.state import PipelineState
    from engine.workspace import Workspace

    ws = Workspace(tmp_path / "ws").init()
    jobs = ws.logs_dir / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    good = {"ts": 1.0, "kind": "progress", "done": 3, "total": 9, "unit": "µs"}
    odd = [b' {"ts": 2.0, "kind": "progress", "done": 4}  ', b"\xef\xbb\xbf" + json.dumps(good).encode(),
           b'{"a": 1} x', b"[1, 2]", b"\xff{}", b"", b'{"ts": 3.0, "kind": "metric", "name": "loss", "value": NaN}']
    (jobs / "a.1.jsonl").write_bytes(json.dumps(good).encode() + b"\n" + b"\n".join(odd) + b"\n")
    st = PipelineState(ws)
    st.refresh()
    a = st.jobs["a.1"]
    assert (a.done, a.total, a.unit) == (3, 9, "µs") and list(a.progress) == [(1.0, 3), (2.0, 4), (1.0, 3)]
    assert str(a.metrics["loss"][0][1]) == "nan" and st._job_readers["a.1"].bad_lines == 3
    for n in range(2):  # a log created right after a listing, then one after the listing was trusted
        (jobs / f"b{n}.1.jsonl").write_text(json.dumps(good) + "\n")
        st.refresh()
        assert f"b{n}.1" in st.jobs
        time.sleep(1.1)
        st.refresh()


def _screen(app: PmatApp) -> list[str]:
    return [s.text for s in app.screen._compositor.render_strips()]


async def test_same_keys_in_every_view_footer_keeps_help_and_quit(app: PmatApp) -> None:
    """80x24, read-only: every view keeps `? Help` and `q Quit` in its footer and the header's
    summary; j/k move in the Gates view; Esc closes the log filter, then backs out; a filter
    does not follow the log to the next job; a refused key says so."""
    out = app.model.ws.job_log("sft.1").with_suffix(".out")
    out.write_text("Traceback (most recent call last):\nRuntimeError: CUDA out of memory\n")
    async with app.run_test(size=(80, 24)) as pilot:
        await _until(pilot, lambda: app.loaded)
        for key in "12345":
            await pilot.press(key)
            await pilot.pause(0.05)
            lines = _screen(app)
            assert lines[-1].startswith("? Help q Quit"), lines[-1]
            assert "2 running · 1 blocked · 1 failed" in lines[0] and "left" in lines[0], lines[0]
        await pilot.press("4", "j")
        from textual.widgets import DataTable

        assert app.screen.query_one(DataTable).cursor_row == 1
        await pilot.press("k")
        assert app.screen.query_one(DataTable).cursor_row == 0
        app.log_target = "sft.1"
        await pilot.press("5")
        view = app.screen.query_one(LogView)
        await _until(pilot, lambda: view.rows > 0)
        steps = [t for t in _screen(app) if " step " in t]
        assert steps and "loss" in steps[-1] and "rewards/margins" in steps[-1]  # one line per step
        raw_rows = sum(1 for _ in open(view.path))
        assert view.rows < raw_rows and not any("resource" in t for t in _screen(app))
        await pilot.press("v")
        assert view.rows == raw_rows
        await pilot.press("v", "slash", *"loss", "enter")
        assert view.filter_text == "loss"
        await pilot.press("escape")
        assert view.filter_text == "" and not app.screen.query_one("#log-filter").display and app.current_mode == "log"
        await pilot.press("slash", *"loss", "enter", "right_square_bracket")
        assert app.log_target != "sft.1" and view.filter_text == ""  # the filter stays with its log
        app.log_target = "sft.1"
        await pilot.press("o")
        await _until(pilot, lambda: any("CUDA out of memory" in t for t in _screen(app)))
        await pilot.press("escape")  # no filter: back to the view before
        assert app.current_mode == "gates"
        await pilot.press("1", "r")
        await pilot.pause(0.1)
        assert any("read-only console: r (run) is refused" in n.message for n in app._notifications), [n.message for n in app._notifications]


async def test_pictures_curves_where_data_is_bars_for_memory(tmp_path: Path) -> None:
    """The sft detail leads with its bar, ETA and loss/margin curves; a stage without metrics draws
    no curve; an empty series draws nothing (never full blocks); memory bars for host, jobs, GPU pids."""
    from engine.memory import GIB, GpuInfo, MemorySnapshot
    from pmat_tui.fixture import FAKE_IDENT
    from pmat_tui.spark import sparkline
    from pmat_tui.widgets.dag_tree import DagTree

    assert sparkline([], 10) == "" and sparkline([3.0, 3.0], 10) == "▁▁" and "█" not in sparkline([0.0], 5)

    def h100() -> MemorySnapshot:
        return MemorySnapshot(total=256 * GIB, available=200 * GIB, psi=None,
                              gpus=[GpuInfo("H100", False, 80 * GIB, 30 * GIB, {FAKE_IDENT["pid"]: 20 * GIB})])

    ws = write_fixture(tmp_path / "fx")
    app = PmatApp(ws, readonly=True, now=lambda: FIXTURE_NOW, memory_probe=h100, watch=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await _until(pilot, lambda: app.loaded)
        app.screen.query_one(DagTree).select_stage("sft")
        await pilot.pause(0.1)
        text = _screen(app)
        detail = text[text.index(next(t for t in text if t.startswith(" ▶ sft"))):]
        assert "█" in detail[1] and "78%" in detail[1] and "ETA ~" in detail[2]
        assert detail[3].lstrip().startswith("loss") and detail[4].lstrip().startswith("margin")
        app.screen.query_one(DagTree).select_stage("sample")
        await pilot.pause(0.1)
        assert not any(t.lstrip().startswith(("loss", "margin")) for t in _screen(app))
        await pilot.press("3")
        await pilot.pause(0.1)
        text = "\n".join(_screen(app))
        assert "host" in text and "GPU0" in text and "20.0 GB/80.0 GB on GPU0" in text
        assert text.count("█") > 10


async def test_done_items_fold_and_running_stages_stay_in_view(tmp_path: Path) -> None:
    """200 stages in 20 work items, the running three in the last: at 80x24 the done items are one
    line each and the running stages are on screen with their bars; Enter unfolds an item."""
    from pmat_tui.fixture import write_bench
    from pmat_tui.widgets.dag_tree import DagTree

    ws = write_bench(tmp_path / "big", jobs=200, events=4000)
    app = PmatApp(ws, readonly=True, now=lambda: FIXTURE_NOW, memory_probe=fixture_memory, watch=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await _until(pilot, lambda: app.loaded)
        await pilot.pause(0.1)
        tree = app.screen.query_one(DagTree)
        assert len(tree.folded) == 19 and len(tree.keys) == 20 + 10
        text = _screen(app)
        assert tree.guides[0] == "▸ " and "✔ 10/10 done" in tree.labels["item:W-000"].plain  # one line per done item
        shown = [t for t in text if "s19" in t and "%" in t and "█" in t]
        assert len(shown) >= 1, text  # a running stage, its bar on screen
        tree.focus()
        await pilot.press("home", "enter")
        assert "W-000" not in tree.folded and len(tree.keys) == 40
