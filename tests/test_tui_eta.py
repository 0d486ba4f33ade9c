"""ETA a person can trust, and a critical path that does not hop: the console's and status's numbers."""

from __future__ import annotations

import random

from engine.dag import critical_path
from engine.overview import estimate
from engine.spec import parse_spec
from engine.state import Attempt, PipelineState, StageState
from engine.workspace import Workspace


def _stage(points: list[tuple[float, float]], total: float = 100) -> StageState:
    st = StageState("s")
    a = Attempt("s.1", "s", 1, launched_at=0.0, started_at=0.0, total=total)
    for ts, done in points:
        a.progress.append((ts, done))
        a.done = done
    st.attempts.append(a)
    return st


def test_eta_excludes_warm_up_and_shows_from_the_second_event_with_its_uncertainty() -> None:
    assert estimate(_stage([(60.0, 1)]), 60.0).eta_s is None  # one event: no rate yet
    first = estimate(_stage([(60.0, 1), (62.0, 2)]), 62.0)
    assert first.eta_s == 196.0 and first.pm_s == first.eta_s  # shown at once, as uncertain as it is
    steady = [(60.0 + 2 * i, 1 + i) for i in range(20)]  # a 60 s load, then one step every 2 s
    e = estimate(_stage([(0.0, 0), *steady]), steady[-1][0])
    assert abs(e.rate - 0.5) < 1e-9 and abs(e.eta_s - 2 * 80) < 1e-6  # the load does not count
    assert e.pm_s < 0.1 * e.eta_s


def test_eta_is_smooth_one_slow_step_moves_it_little() -> None:
    rng = random.Random(0)
    pts, t = [], 0.0
    for i in range(60):
        t += 2 + rng.uniform(-0.3, 0.3)
        pts.append((t, i))
    before = estimate(_stage(pts), t).eta_s
    after = estimate(_stage([*pts, (t + 10, 60)]), t + 10).eta_s  # one step took 5x longer
    assert before is not None and after is not None and abs(after - before) / before < 0.35


def test_critical_path_ties_go_to_the_first_stage_and_jitter_does_not_flip_it(tmp_path) -> None:
    spec = parse_spec({"name": "t", "stages": {
        "a": {"kind": "command", "params": {"argv": ["true"]}, "memory_gb": 1, "duration_h": 1},
        "b": {"kind": "command", "params": {"argv": ["true"]}, "memory_gb": 1, "duration_h": 1},
        "end": {"kind": "command", "params": {"argv": ["true"]}, "memory_gb": 1, "duration_h": 1, "after": ["a", "b"]},
    }}, check_params=False)
    assert critical_path(spec)[0] == ["a", "end"]
    state = PipelineState(Workspace(tmp_path / "ws").init())
    paths = {tuple(critical_path(spec, state, remaining=True, left_h={"a": 0.5 * (1 + j), "b": 0.5 * (1 - j)})[0])
             for j in (0.001, -0.001, 0.002, -0.002)}
    assert paths == {("a", "end")}


def test_running_rows_keep_the_measured_phases_between_rebuilds(tmp_path) -> None:
    """The console's rows are rebuilt with build_overview and updated every tick in between: both
    use the stage's measured phases (a rehearsal's), so its ETA does not flip between two models."""
    import yaml

    from pmat_tui.fixture import FIXTURE_NOW, write_fixture
    from pmat_tui.model import ConsoleModel

    ws = write_fixture(tmp_path / "ws")
    spec = yaml.safe_load(ws.spec_path.read_text())
    ws.spec_path.write_text(yaml.safe_dump({**spec, "name": "pmat-rehearsal"}, sort_keys=False))  # measured stages
    model = ConsoleModel(ws, readonly=True, now=lambda: FIXTURE_NOW)
    model.refresh(force=True)
    rebuilt = {s: model.rows[s].eta_s for s in ("sft", "sample")}
    units_only = {s: estimate(model.state.stage(s), FIXTURE_NOW).eta_s for s in rebuilt}
    assert model.profiles.keys() >= rebuilt.keys() and rebuilt != units_only  # the phases change these ETAs
    model._update_running_rows()
    assert {s: model.rows[s].eta_s for s in rebuilt} == rebuilt
