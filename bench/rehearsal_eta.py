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
         BENCH lines for the sampling and training stages (target: within 25 %)
"""

from __future__ import annotations

import json
import sys
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


def main() -> None:
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
