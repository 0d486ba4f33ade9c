"""The console's ETA on the H200 rehearsal's real event sequences: start-up + units + tail.

Each sequence is a job log of the H200 run (2026-12-03, docs/REHEARSAL.md) as the job wrote it:
job_started, progress events (the timestamps as logged, relative to the start; an eval's 41
problems that arrive together are 41 events within a millisecond), job_finished. The console's
ETA is read every 0.25 s while a quarter to half of the units are done, as ``engine.measure``
scores it, and must be within 25% of the time that was actually left.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from engine.eta import FINISHING_S, Profile, estimate, phases, profiles
from engine.spec import load_spec, pipeline_path
from engine.state import Attempt, PipelineState, StageState
from engine.workspace import Workspace

T0 = 1796303000.0
# stage: (kind, unit, total, finished at s, [(s, done), ...] as logged)
H200 = {
    "sft": ("sft", "steps", 24, 74.38, [
        (53.42, 1), (56.09, 2), (56.68, 3), (57.42, 4), (57.86, 5), (58.29, 6), (58.71, 7), (59.09, 8),
        (59.52, 9), (59.98, 10), (60.39, 11), (60.91, 12), (64.54, 13), (65.21, 14), (65.59, 15), (66.02, 16),
        (66.49, 17), (69.63, 18), (70.45, 19), (70.89, 20), (71.37, 21), (71.82, 22), (72.22, 23), (72.72, 24)]),
    "dpo": ("dpo", "steps", 24, 96.75, [
        (50.12, 1), (51.12, 2), (52.17, 3), (53.24, 4), (54.3, 5), (55.3, 6), (56.31, 7), (57.33, 8),
        (58.38, 9), (59.4, 10), (60.48, 11), (61.53, 12), (63.6, 13), (64.65, 14), (65.7, 15), (66.76, 16),
        (67.89, 17), (69.63, 18), (71.2, 19), (72.78, 20), (73.83, 21), (74.9, 22), (75.93, 23), (76.91, 24)]),
    "sample": ("sample", "prompts", 16, 65.84, [(22.23, 0), (28.52, 4), (32.86, 8), (37.33, 12), (48.96, 16)]),
    "distill": ("distill", "prompts", 12, 38.29, [(14.27, 0), (31.24, 4), (34.53, 8), (37.69, 12)]),
    "baseline_humaneval": ("eval", "problems", 164, 54.38, [
        (25.14, 0), *((45.02 + i * 0.0002, i) for i in range(1, 42)), *((49.6, d) for d in range(42, 83)),
        *((52.07, d) for d in range(83, 124)), *((53.66, d) for d in range(124, 165))]),
}
# The second H200 run (14:47-15:05 UTC), the same code but the fusing fix: its job logs.
RUN2 = {
    "sft": ("sft", "steps", 24, 66.9, [
        (43.78, 1), (47.04, 2), (50.34, 3), (51.22, 4), (51.71, 5), (52.31, 6), (53.01, 7), (53.5, 8),
        (54.16, 9), (54.64, 10), (55.15, 11), (55.63, 12), (57.02, 13), (57.52, 14), (58.15, 15), (58.68, 16),
        (59.31, 17), (59.95, 18), (60.8, 19), (61.35, 20), (61.75, 21), (62.22, 22), (62.75, 23), (65.27, 24)]),
    "dpo": ("dpo", "steps", 24, 92.31, [
        (45.35, 1), (46.43, 2), (47.46, 3), (48.78, 4), (50.27, 5), (51.78, 6), (53.43, 7), (54.72, 8),
        (56.29, 9), (57.65, 10), (59.22, 11), (60.72, 12), (62.5, 13), (63.54, 14), (64.52, 15), (65.51, 16),
        (66.53, 17), (67.5, 18), (68.51, 19), (69.64, 20), (70.66, 21), (71.72, 22), (72.77, 23), (73.77, 24)]),
    "sample": ("sample", "prompts", 16, 49.21, [(15.6, 0), (21.78, 4), (26.0, 8), (30.31, 12), (34.56, 16)]),
    "distill": ("distill", "prompts", 10, 37.38, [(13.99, 0), (30.12, 4), (33.42, 8), (36.72, 10)]),
}


def _write_log(ws: Workspace, stage: str, upto: float | None = None, run: dict = H200) -> None:
    """The job's log as the stage runner writes it, cut at ``upto`` seconds (still running)."""
    kind, unit, total, fin, pts = run[stage]
    recs = [{"ts": T0, "kind": "job_started", "job_id": f"{stage}.1", "stage": stage, "stage_kind": kind, "attempt": 1}]
    recs += [{"ts": T0 + t, "kind": "progress", "done": d, "total": total, "unit": unit}
             for t, d in pts if upto is None or t <= upto]
    if upto is None:
        recs.append({"ts": T0 + fin, "kind": "job_finished", "outcome": "ok", "error": None, "peak_rss": 0})
    log = ws.root / "logs" / "jobs" / f"{stage}.1.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))


def _stage_at(tmp_path: Path, stage: str, t: float, run: dict = H200) -> StageState:
    """The stage as the console reads it at ``t`` s: its job log, parsed by PipelineState."""
    ws = Workspace(tmp_path / f"ws-{stage}-{t}-{id(run)}").init()
    _write_log(ws, stage, upto=t, run=run)
    state = PipelineState(ws)
    state.refresh()
    return state.stage(stage)


def _phases(stage: str, run: dict = H200) -> dict[str, float]:
    _, _, _, fin, pts = run[stage]
    ph = phases(T0, T0 + fin, [(T0 + t, d) for t, d in pts])
    assert ph is not None
    return ph


def _measured(stage: str, run: dict = H200) -> Profile:
    """The stage's phases as ``engine.measure`` folds them from the run (what the data file holds)."""
    ph = _phases(stage, run)
    return Profile(ph["startup_s"], ph["unit_s"], ph["tail_s"], run[stage][2], ph["step"])


def _worst_error(tmp_path: Path, stage: str, profile: Profile | None, run: dict = H200) -> float:
    """The largest error at 0.25 s ticks while 25-50 % of the units are done (engine.measure's
    score takes the largest over its 1 s samples too)."""
    _, _, total, fin, pts = run[stage]
    worst, t = 0.0, 0.0
    while t < fin:
        done = max((d for s, d in pts if s <= t), default=0)
        if 0.25 <= done / total <= 0.5:
            eta = estimate(_stage_at(tmp_path, stage, t, run), T0 + t, profile).eta_s
            worst = max(worst, 1.0 if eta is None else abs(eta - (fin - t)) / (fin - t))
        t += 0.25
    return worst


@pytest.mark.parametrize("stage", ["sft", "dpo", "sample", "distill"])
def test_eta_within_25_percent_at_a_quarter_to_half_done(tmp_path: Path, stage: str) -> None:
    """With the measured start-up, unit time and tail the ETA is within 25%; from the units
    alone (the console before engine.eta) it is not: start-up and tail are most of the stage."""
    assert _worst_error(tmp_path, stage, _measured(stage)) <= 0.25
    assert _worst_error(tmp_path, stage, None) > 0.25


def test_eval_burst_never_reads_zero(tmp_path: Path) -> None:
    """41 problems reported within a millisecond are one burst, not a rate of 200 000/s: with no
    measurement there is no ETA yet; with one, the units left at the measured pace."""
    st = _stage_at(tmp_path, "baseline_humaneval", 46.0)
    assert st.latest.done == 41
    assert estimate(st, T0 + 46.0).eta_s is None
    eta = estimate(st, T0 + 46.0, _measured("baseline_humaneval")).eta_s
    assert eta is not None and abs(eta - (54.38 - 46.0)) / (54.38 - 46.0) <= 0.25


def test_before_the_first_unit_and_after_the_last(tmp_path: Path) -> None:
    """Start-up left + every unit + tail before the first unit (the measured units until the job
    reports its total); the tail left (at least FINISHING_S) after the last one."""
    p = _measured("sample")
    st = _stage_at(tmp_path, "sample", 10.0)
    assert estimate(st, T0 + 10.0, p).eta_s == pytest.approx(p.startup_s - 10.0 + 16 * p.unit_s + p.tail_s)
    late = estimate(st, T0 + 40.0, p).eta_s  # start-up overran: never negative, the units still to come
    assert late == pytest.approx(16 * p.unit_s + p.tail_s)
    st = _stage_at(tmp_path, "sample", 50.0)
    assert estimate(st, T0 + 50.0, p).eta_s == pytest.approx(p.tail_s - (50.0 - 48.96))
    assert estimate(st, T0 + 200.0, p).eta_s == FINISHING_S


def test_a_long_job_the_start_up_is_noise_and_the_observed_rate_wins(tmp_path: Path) -> None:
    """A 10-hour SFT (3600 steps of 10 s after a 60 s load) with the rehearsal's profile, whose
    unit time (0.84 s) is 12x off: at a quarter done the ETA follows the observed steps."""
    ws = Workspace(tmp_path / "ws").init()
    pts = [(60.0 + 10.0 * i, i) for i in range(1, 901)]
    recs = [{"ts": T0, "kind": "job_started", "job_id": "sft.1", "stage": "sft", "stage_kind": "sft", "attempt": 1}]
    recs += [{"ts": T0 + t, "kind": "progress", "done": d, "total": 3600, "unit": "steps"} for t, d in pts]
    (ws.root / "logs" / "jobs").mkdir(parents=True, exist_ok=True)
    (ws.root / "logs" / "jobs" / "sft.1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    state = PipelineState(ws)
    state.refresh()
    st = state.stage("sft")
    eta = estimate(st, T0 + pts[-1][0], _measured("sft")).eta_s
    assert eta is not None and abs(eta - 2700 * 10.0) / (2700 * 10.0) <= 0.25


def test_the_shipped_data_file_gives_the_rehearsal_its_phases() -> None:
    """engine.measure folded the H200 runs' phases into the data file the ETA reads (its first two
    runs are the job logs replayed here); the prior is their median; stages it did not measure
    (slerp in pmat.yaml's kinds) take their kind's; other pipelines get none."""
    spec = load_spec(pipeline_path("rehearsal"))
    prof = profiles(spec)
    data = json.loads((pipeline_path("rehearsal").parent / "data" / "rehearsal-measured.json").read_text())
    runs = [r["startup_s"] for r in data["stages"]["sft"]["runs"]]
    assert len(runs) >= 3
    assert abs(runs[0] - _measured("sft").startup_s) < 0.1 and abs(runs[1] - _measured("sft", RUN2).startup_s) < 0.1
    assert abs(prof["sft"].startup_s - statistics.median(runs)) < 0.01 and prof["sft"].units == 24
    assert prof["distill"].step == 4 and prof["distill"].units in (10, 12)
    assert all(prof[s].unit_s for s in ("sft", "dpo", "sample", "distill"))
    assert profiles(load_spec(pipeline_path("demo"))) == {}


@pytest.mark.parametrize(("stage", "prior", "truth"), [
    ("sft", H200, RUN2), ("distill", H200, RUN2), ("distill", RUN2, H200)])
def test_out_of_sample_one_run_predicts_the_other(tmp_path: Path, stage: str, prior: dict, truth: dict) -> None:
    """One run's phases predict the other run within 25 %: sft's first steps warm up for 3 s
    each against 0.5 s later (the median interval, not the mean, and a prior weighing twice its
    units); distill's 10 prompts are batches of 4 + 4 + 2, the last as slow as a whole one."""
    assert _worst_error(tmp_path, stage, _measured(stage, prior), truth) <= 0.25


@pytest.mark.parametrize("stage", ["sft", "sample", "distill"])
def test_the_median_of_both_runs_predicts_each(tmp_path: Path, stage: str) -> None:
    """The data file keeps both runs and the prior is their median: run 1's sample lost 7 s to a
    neighbour in its last batch (1 761 against 4 600 tokens/s), which one run's prior carries
    whole; with both, each run is within 25 %."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    spec = load_spec(pipeline_path("rehearsal"))
    runs = [{**_phases(stage, r), "units": r[stage][2]} for r in (H200, RUN2)]
    rec = {"kind": stage, "status": "done", **runs[-1], "runs": runs}
    (data_dir / "x-measured.json").write_text(json.dumps({"pipeline": spec.name, "stages": {stage: rec}}))
    prior = profiles(spec, data_dir)[stage]
    for truth in (H200, RUN2):
        assert _worst_error(tmp_path, stage, prior, truth) <= 0.25


def test_units_left_round_to_the_jobs_own_batch_not_the_profiles() -> None:
    """The units left cost whole bursts of the job's own batch: a job reporting one unit at a
    time is not rounded up to the 41-problem batches its profile was measured with; one reporting
    batches of 4 pays a whole batch for its last 2."""
    def stage(step: int, done: int, total: int) -> StageState:
        st = StageState("s")
        a = Attempt("s.1", "s", 1, launched_at=T0, started_at=T0, total=total, done=done)
        a.progress.extend((T0 + 10.0 + i, i) for i in range(step, done + 1, step))
        st.attempts.append(a)
        return st

    eta = estimate(stage(1, 30, 100), T0 + 40.0, Profile(0.0, 1.0, 0.0, 100, step=41)).eta_s
    assert eta == pytest.approx(70.0)
    eta = estimate(stage(4, 8, 10), T0 + 18.0, Profile(0.0, 1.0, 0.0, 10, step=4)).eta_s
    assert eta == pytest.approx(4.0)  # 2 prompts left: one batch of 4, at 1 s a prompt
