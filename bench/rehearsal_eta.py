"""ETA of the full PMAT pipeline (pmat.yaml's work) from the rehearsal's measurements, on the
H200 it ran on and scaled to the GB10. Prints one line per stage and the totals.

A stage's wall time = startup (imports, loading the checkpoint: measured before its first unit)
+ work (measured per unit, scaled by the real work / the rehearsal's) + tail (after its last unit):
the phases engine.measure folded into the data file (engine.eta.phases), the ones the console's ETA uses.
On the GB10: decode (eval, sample, distill) is bandwidth-bound, x (measured H200 copy bandwidth /
273 GB/s); training, prune and perplexity are compute-bound, x (measured bf16 rate / 62 TFLOP/s,
the GB10's dense bf16 lead: 1 PFLOP/s sparse FP4 / 16); checkpoint I/O stages x 1; startup x 1.5.
Usage: python bench/rehearsal_eta.py [MEASURED.json]   (default: the shipped data file)
       python bench/rehearsal_eta.py --error MEASURED.json   the console's ETA error per stage in a
         rehearsal (read by engine.measure from the monitor's samples at 25-50 % of the units: the
         ETA the console showed against the time that was actually left), one line per stage and
         BENCH lines for the sampling and training stages (target: within 25 %); the error of a stage
         is the LARGEST over the window's samples, not a typical one
       python bench/rehearsal_eta.py --oos RUN_A_JOBLOGS.tgz RUN_B_JOBLOGS.tgz   out of sample: each run's
         phases (engine.eta.phases from its job logs) predict the other run's sampling and training
         stages, replayed through the console's state reader every 0.25 s at 25-50 % of the units
         (largest error), and the median of both runs (the shipped prior) predicts each
"""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "engine" / "pipelines" / "data" / "rehearsal-measured.json"
GB10_BW, GB10_BF16 = 273.0, 62.0
# real work / rehearsal work per unit-scaled stage (pmat.yaml against rehearsal.yaml)
TOK = 768 / 128  # eval max_new_tokens: official 768, rehearsal 128
SCALE = {
    "baseline_humaneval": TOK, "baseline_humaneval_plus": 164 / 16 * TOK, "baseline_mbpp": 500 / 64 * TOK,
    "baseline_mbpp_plus": 378 / 20 * TOK, "sample": 464 / 16, "distill": 374 / 12 * 512 / 128,
    "sft": 374 / 24, "dpo": 928 / 24, "prune": 2.0,
    "eval_sft_humaneval": TOK, "eval_dpo_humaneval": TOK, "eval_ties_humaneval": TOK,
    "eval_sft_mbpp": 500 / 64 * TOK, "eval_dpo_mbpp": 500 / 64 * TOK, "eval_ties_mbpp": 500 / 64 * TOK,
    "final_humaneval": TOK,
}
DECODE = ("eval", "sample", "distill")
COMPUTE = ("sft", "dpo", "prune", "perplexity", "parity")
EXTRA = {"slerp": "ties"}  # not rehearsed: same kind and work as ties
CRITERION = ("sample", "distill", "sft", "dpo")  # the kinds whose ETA must be within 25 % (issue #16)


def error_lines(measured: dict) -> list[str]:
    """One line per rehearsed stage with the console's ETA error, BENCH lines for the criterion's."""
    lines, bench = [], []
    for name, m in measured["stages"].items():
        err = m.get("eta_rel_error")
        if m.get("status") != "done":
            lines.append(f"{name:<24} {m.get('status', '?')}")
            continue
        shown = "-" if err is None else f"{100 * err:.0f}%"
        lines.append(f"{name:<24} {m['kind']:<12} wall {m['wall_s'] or 0:6.1f} s  start-up {m.get('startup_s', 0):5.1f} s  "
                     f"tail {m.get('tail_s', 0):5.1f} s  ETA error {shown}")
        if m["kind"] in CRITERION:
            ok = err is not None and err <= 0.25
            bench.append(f"BENCH rehearsal_eta_error_{name} {'-' if err is None else f'{err:.3f}'} 0.25 {'PASS' if ok else 'MISS'}")
    return lines + bench


def _runs_of(tgz: Path) -> dict[str, tuple[float, float, list[tuple[float, float]]]]:
    """Per criterion stage of a run's job logs: (started, finished, [(ts, done), ...])."""
    out = {}
    with tarfile.open(tgz) as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            stage = name.split(".")[0]
            if stage not in CRITERION or not name.endswith(".1.jsonl"):
                continue
            recs = [json.loads(line) for line in tar.extractfile(member).read().decode().splitlines() if line.strip()]
            start = next(r["ts"] for r in recs if r.get("kind") == "job_started")
            end = next(r["ts"] for r in recs if r.get("kind") == "job_finished")
            out[stage] = (start, end, [(r["ts"], r["done"]) for r in recs if r.get("kind") == "progress"],
                          next(r["total"] for r in recs if r.get("kind") == "progress"))
    return out


def _worst(run: tuple, prior) -> float:
    """The largest relative ETA error at 0.25 s ticks while 25-50 % of the units are done."""
    from engine.eta import estimate
    from engine.state import Attempt, StageState

    start, end, pts, total = run
    worst, t = 0.0, start
    while t < end:
        seen = [(ts, d) for ts, d in pts if ts <= t]
        if seen and 0.25 <= seen[-1][1] / total <= 0.5:
            st = StageState("s")
            a = Attempt("s.1", "s", 1, launched_at=start, started_at=start, total=total, done=seen[-1][1])
            a.progress.extend(seen)
            st.attempts.append(a)
            eta = estimate(st, t, prior).eta_s
            worst = max(worst, 1.0 if eta is None else abs(eta - (end - t)) / (end - t))
        t += 0.25
    return worst


def oos_lines(a: Path, b: Path) -> list[str]:
    """Out-of-sample ETA errors, both directions, and the median of both runs' prior."""
    from engine.eta import phases, prior_of

    runs = {"A": _runs_of(a), "B": _runs_of(b)}
    lines = []
    for stage in CRITERION:
        ph = {k: {**phases(r[stage][0], r[stage][1], r[stage][2]), "units": r[stage][3]} for k, r in runs.items()}
        one = {k: prior_of(p) for k, p in ph.items()}
        both = prior_of({"units": ph["B"]["units"], "runs": [ph["A"], ph["B"]]})
        for label, prior, truth in (("A_to_B", one["A"], "B"), ("B_to_A", one["B"], "A"),
                                    ("median_to_A", both, "A"), ("median_to_B", both, "B")):
            err = _worst(runs[truth][stage], prior)
            lines.append(f"BENCH rehearsal_eta_oos_{stage}_{label} {err:.3f} 0.25 {'PASS' if err <= 0.25 else 'MISS'}")
    return lines


def main() -> None:
    if sys.argv[1:2] == ["--oos"]:
        print("\n".join(oos_lines(Path(sys.argv[2]), Path(sys.argv[3]))))
        return
    if sys.argv[1:2] == ["--error"]:
        print("\n".join(error_lines(json.loads(Path(sys.argv[2]).read_text()))))
        return
    data = json.loads((Path(sys.argv[1]) if len(sys.argv) > 1 else DATA).read_text())
    bw_ratio = data["ceilings"]["copy_bandwidth_GBps"] / GB10_BW
    fl_ratio = data["ceilings"]["bf16_matmul_TFLOPs"] / GB10_BF16
    tot_h200 = tot_gb10 = 0.0
    stages = dict(data["stages"]) | {k: data["stages"][v] for k, v in EXTRA.items()}
    for name, m in stages.items():
        if m.get("status") != "done":
            continue
        start, tail = m.get("startup_s", m["wall_s"]), m.get("tail_s", 0.0)
        work = max(m["wall_s"] - start - tail, 0.0) * SCALE.get(name, 1.0)
        h200 = start + work + tail
        kind = m["kind"]
        f = bw_ratio if kind in DECODE else fl_ratio if kind in COMPUTE else 1.0
        gb10 = 1.5 * start + f * work + tail
        tot_h200, tot_gb10 = tot_h200 + h200, tot_gb10 + gb10
        print(f"{name:<24} {kind:<12} H200 {h200 / 60:7.1f} min   GB10 {gb10 / 3600:6.2f} h")
    print(f"serial total: H200 {tot_h200 / 3600:.2f} h, GB10 {tot_gb10 / 3600:.1f} h "
          f"(bandwidth x{bw_ratio:.1f}, compute x{fl_ratio:.1f})")


if __name__ == "__main__":
    main()
