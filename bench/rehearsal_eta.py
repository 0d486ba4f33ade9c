"""ETA of the full PMAT pipeline (pmat.yaml's work) from the rehearsal's measurements, on the
H200 it ran on and scaled to the GB10. Prints one line per stage and the totals.

A stage's wall time = startup (imports, loading the checkpoint: measured before its first unit)
+ work (measured per unit, scaled by the real work / the rehearsal's) + tail (after its last unit).
On the GB10: decode (eval, sample, distill) is bandwidth-bound, x (measured H200 copy bandwidth /
273 GB/s); training, prune and perplexity are compute-bound, x (measured bf16 rate / 62 TFLOP/s,
the GB10's dense bf16 lead: 1 PFLOP/s sparse FP4 / 16); checkpoint I/O stages x 1; startup x 1.5.
Usage: python bench/rehearsal_eta.py SAMPLES.jsonl (the run's monitor samples)
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


def phases(samples: list[dict], stage: str, wall: float) -> tuple[float, float, float]:
    pts = [(s["t"], s["jobs"][stage]) for s in samples if stage in s["jobs"]]
    if not pts:
        return wall, 0.0, 0.0
    t0 = pts[0][0]
    first = next((t for t, j in pts if j["done"]), None)
    last = next((t for t, j in pts if j["total"] and j["done"] == j["total"]), pts[-1][0])
    if first is None:
        return wall, 0.0, 0.0
    return first - t0, max(0.0, last - first), max(0.0, wall - (last - t0))


def main() -> None:
    data = json.loads(DATA.read_text())
    samples = [json.loads(x) for x in Path(sys.argv[1]).read_text().splitlines() if '"jobs"' in x]
    bw_ratio = data["ceilings"]["copy_bandwidth_GBps"] / GB10_BW
    fl_ratio = data["ceilings"]["bf16_matmul_TFLOPs"] / GB10_BF16
    tot_h200 = tot_gb10 = 0.0
    stages = dict(data["stages"]) | {k: data["stages"][v] for k, v in EXTRA.items()}
    for name, m in stages.items():
        if m.get("status") != "done":
            continue
        start, work, tail = phases(samples, EXTRA.get(name, name), m["wall_s"])
        work *= SCALE.get(name, 1.0)
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
