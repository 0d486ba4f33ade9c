"""Benchmark: streamed LoRA merge vs peft's load-everything merge and the I/O floor.

Builds a random Qwen2.5-Coder-7B-shaped bf16 checkpoint (sharded; ``--shape 7b`` is
~15.2 GB, ``--shape small`` ~0.3 GB for a CPU box) and a rank-16 adapter on every linear
layer, then runs, each in a fresh subprocess that reports its own peak RSS:

  floor   read every shard into one reused buffer and write the bytes to new files (fsync)
  copy    the same tensors through CheckpointReader -> ShardedWriter.copy_from, no math
  ours    engine.models.lora.merge_adapter (streamed, fp32 math on --device; unchanged
          tensors copied file to file)
  peft    AutoModelForCausalLM.from_pretrained + PeftModel + merge_and_unload + save_pretrained

and checks that ours and peft's outputs agree. Each contender's fastest of ``--repeat``
runs counts; the order alternates between repeats because page-cache state (what of the
base is still cached) changes from run to run on a box with little RAM. Disk needed:
the base plus two outputs (~46 GB at 7B). Targets (issue 7): peak RSS <= 3 GB at full
size; time <= 2x the read+write floor.

    python bench/merge.py --shape small
    python bench/merge.py --shape 7b --device cuda --workdir /big/disk/dir
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RSS_TARGET_GB = 3.0
TIME_TARGET = 2.0
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BASE_SHARD_BYTES = 4 << 30  # the base's layout, like the published Qwen2.5-Coder-7B (4 shards)


def _child(mode: str, base: Path, adapter: Path, out: Path, device: str, shard_bytes: int) -> dict:
    """Run one contender in this (fresh) process; returns seconds and peak RSS."""
    import torch

    from engine.models.checkpoint import open_checkpoint
    from engine.models.checkpoint_writer import ShardedWriter
    from engine.models.lora import merge_adapter

    if mode == "peft":  # imported before the clock starts, like ours
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
    import_rss = _status_kb("VmRSS") * 1024
    t0 = time.perf_counter()
    if mode == "floor":
        out.mkdir(parents=True)
        buf = bytearray(64 << 20)  # one warm buffer: the floor pays no page faults of its own
        view = memoryview(buf)
        for src in sorted(base.glob("*.safetensors")):
            with open(src, "rb", buffering=0) as fi, open(out / src.name, "wb", buffering=0) as fo:
                while n := fi.readinto(buf):
                    chunk = view[:n]
                    while chunk:  # raw writes may be partial
                        chunk = chunk[fo.write(chunk) :]
                os.fsync(fo.fileno())
    elif mode == "copy":
        reader = open_checkpoint(base)
        names = list(reader.iter_shard_order())
        with ShardedWriter(out, shard_bytes, layout=[(n, reader.dtype(n), reader.shape(n)) for n in names]) as w:
            for name in names:
                w.copy_from(reader, name)
    elif mode == "ours":
        merge_adapter(base, adapter, out, out_dtype=None, max_shard_bytes=shard_bytes, device=device)
    elif mode == "peft":
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        merged.save_pretrained(out, max_shard_size=f"{shard_bytes >> 20}MB")
        for f in out.glob("*.safetensors"):
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
    else:
        raise ValueError(f"unknown mode {mode!r}")
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"mode": mode, "seconds": seconds, "peak_rss": _status_kb("VmHWM") * 1024,
            "import_rss": import_rss}


def _status_kb(key: str) -> int:
    """A /proc/self/status field in kB (VmHWM, unlike ru_maxrss, is not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _run(mode: str, base: Path, adapter: Path, out: Path, device: str, shard_bytes: int) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--base", str(base), "--adapter", str(adapter),
           "--out", str(out), "--device", device, "--shard-bytes", str(shard_bytes)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{mode} failed (rc {res.returncode}): {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _compare(ours: Path, peft: Path) -> tuple[float, int]:
    """Largest relative Frobenius difference over tensors, and how many tensors compared."""
    from engine.models.checkpoint import open_checkpoint

    a, b = open_checkpoint(ours), open_checkpoint(peft)
    if set(a.names()) != set(b.names()):
        raise RuntimeError(f"tensor names differ: {sorted(set(a.names()) ^ set(b.names()))[:10]}")
    worst = 0.0
    for name in a.names():
        x, y = a.get(name).float(), b.get(name).float()
        worst = max(worst, float((x - y).norm() / y.norm().clamp_min(1e-30)))  # bf16 values: exact in fp32
    return worst, len(a.names())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=["tiny", "small", "7b"], default="small")
    ap.add_argument("--device", default="cpu", help="where our merge does its fp32 math (cpu | cuda)")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch dir (needs ~3x the checkpoint size)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--skip-peft", action="store_true", help="skip the load-everything baseline")
    ap.add_argument("--child")
    ap.add_argument("--base", type=Path)
    ap.add_argument("--adapter", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--shard-bytes", type=int, default=None, help="output shard limit (default: the stage's)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each contender; the fastest counts")
    args = ap.parse_args()
    if args.shard_bytes is None:
        from engine.stages.merge import Params

        args.shard_bytes = Params.model_fields["max_shard_bytes"].default
    if args.child:
        print(json.dumps(_child(args.child, args.base, args.adapter, args.out, args.device, args.shard_bytes)))
        return 0

    from engine.models.synthetic import SHAPES, build_adapter, build_checkpoint

    shape = SHAPES[args.shape]
    root = Path(tempfile.mkdtemp(prefix="bench-merge-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        base = build_checkpoint(root / "base", shape, max_shard_bytes=BASE_SHARD_BYTES)
        adapter = build_adapter(root / "adapter", base, shape, r=args.rank, alpha=2 * args.rank)
        size = sum(f.stat().st_size for f in base.glob("*.safetensors"))
        print(f"shape {args.shape}: {size / 1e9:.2f} GB bf16 in {len(list(base.glob('*.safetensors')))} shards, "
              f"rank-{args.rank} adapter on {len(list(adapter.iterdir()))} files; built in {time.perf_counter() - t0:.1f}s")
        results: dict[str, dict] = {}
        modes = ["floor", "copy", "ours", *(() if args.skip_peft else ("peft",))]
        for rep in range(args.repeat):
            for mode in modes if rep % 2 == 0 else modes[::-1]:  # alternate order: page-cache state varies
                out = root / f"out-{mode}"
                shutil.rmtree(out, ignore_errors=True)
                r = _run(mode, base, adapter, out, args.device, args.shard_bytes)
                print(f"{mode:>5} #{rep + 1}: {r['seconds']:8.2f} s  peak RSS {r['peak_rss'] / 2**30:6.2f} GiB "
                      f"({r['import_rss'] / 2**30:.2f} GiB after imports)")
                if mode not in results or r["seconds"] < results[mode]["seconds"]:
                    results[mode] = r
                pair = [root / "out-ours", root / "out-peft"]
                if mode in ("ours", "peft") and all(p.exists() for p in pair) and rep == 0:
                    worst, n = _compare(*pair)
                    print(f"ours vs peft: max relative difference {worst:.2e} over {n} tensors (bf16 storage)")
                if mode in ("floor", "copy") or args.skip_peft or all(p.exists() for p in pair):
                    for p in ([out] if mode in ("floor", "copy") else pair):  # disk: base + at most 2 outputs
                        shutil.rmtree(p, ignore_errors=True)
        if "peft" in results:
            print(f"peft / ours: peak RSS {results['peft']['peak_rss'] / results['ours']['peak_rss']:.1f}x, "
                  f"time {results['peft']['seconds'] / results['ours']['seconds']:.2f}x")
        rss_gb = results["ours"]["peak_rss"] / 1e9
        ratio = results["ours"]["seconds"] / results["floor"]["seconds"]
        print(f"ours / floor time {ratio:.2f}x (copy through reader/writer {results['copy']['seconds'] / results['floor']['seconds']:.2f}x)")
        print(f"BENCH merge_peak_rss_gb_{args.shape} {rss_gb:.2f} {RSS_TARGET_GB} {'PASS' if rss_gb <= RSS_TARGET_GB else 'MISS'}")
        print(f"BENCH merge_time_vs_floor_{args.shape} {ratio:.2f} {TIME_TARGET} {'PASS' if ratio <= TIME_TARGET else 'MISS'}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
