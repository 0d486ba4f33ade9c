"""Data-parallel generation: N engines (one per GPU, or N CPU processes) behind the one Backend
interface, so `sample`, `eval` and `distill` shard their prompts by asking for ``gpus: N``.

Each engine is a spawned process that loads the model once (``load_backend``: transformers,
vLLM, llama.cpp: any backend). ``generate`` deals a call's requests round-robin over the engines (request i to engine i mod N), and puts
the outputs back in request order. A sample's text depends only on its request (prompt,
parameters, per-task seed, sample index), never on its batch, so the merged outputs are the
ones one engine gives: greedy evaluation scores the same per task, sampling writes the same
rows. Each engine appends what it finished to ``cache_dir/shard-K.jsonl`` (fsynced) keyed by the
model's files and the request, so a killed job resumes per shard: the shards that finished are
read back, only the rest is generated again.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import signal
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path

from engine.gen.backends import load_backend
from engine.gen.base import Backend, GenOutput, GenRequest, load_tokenizer
from engine.jsonl import append_jsonl, read_objects


def engine_devices(device: str, n: int) -> list[str]:
    """One device per engine: cuda:0..n-1 (of the visible GPUs) on CUDA, else n CPU engines."""
    import torch

    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if not cuda:
        return ["cpu"] * n
    if torch.cuda.device_count() < n:
        raise RuntimeError(f"{n} engines asked for, {torch.cuda.device_count()} CUDA devices visible")
    return [f"cuda:{i}" for i in range(n)]


def load_engines(model_dir: Path | str, backend: str = "transformers", *, device: str = "auto", dtype: str = "auto",
                 engines: int = 1, cache_dir: Path | None = None) -> Backend:
    """One in-process engine (today's path) for ``engines == 1``, else a ParallelBackend."""
    if engines <= 1:
        return load_backend(model_dir, backend, device=device, dtype=dtype)
    return ParallelBackend(Path(model_dir), backend, engine_devices(device, engines), dtype, cache_dir)


def model_stamp(model_dir: Path) -> str:
    """Cheap identity of a checkpoint for the shard cache: its files' names, sizes and mtimes."""
    root = Path(model_dir)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())  # a GGUF is one file
    stat = [(str(p.relative_to(root.parent)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps([str(Path(model_dir).resolve()), stat]).encode()).hexdigest()


def request_key(stamp: str, backend: str, dtype: str, req: GenRequest) -> str:
    return hashlib.sha256(json.dumps([stamp, backend, dtype, asdict(req)], sort_keys=True).encode()).hexdigest()


def _serve(conn: Connection, model_dir: str, backend: str, device: str, dtype: str, threads: int,
           cache: str | None) -> None:
    """An engine process: load the model, then answer ``(requests, keys, max_rows)`` until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the stage decides when to stop; EOF ends us
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    import torch

    torch.set_num_threads(threads)
    try:
        engine = load_backend(model_dir, backend, device=device, dtype=dtype)
        conn.send(("ready", engine.name, engine.device))
    except Exception as exc:  # noqa: BLE001 - reported to the stage, which fails with it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        try:
            reqs, keys, max_rows = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if max_rows is not None and hasattr(engine, "max_rows"):
                engine.max_rows = max_rows
            outs = engine.generate(reqs)
            if cache:
                append_jsonl(Path(cache), [{"key": k, **asdict(o)} for k, o in zip(keys, outs, strict=True)])
            conn.send(("ok", outs))
        except Exception as exc:  # noqa: BLE001
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class ParallelBackend:
    """N engine processes; one ``generate`` call is sharded over them and merged in order."""

    def __init__(self, model_dir: Path, backend: str, devices: list[str], dtype: str = "auto",
                 cache_dir: Path | None = None) -> None:
        self.tokenizer = load_tokenizer(model_dir)
        self.backend, self.dtype, self.max_rows = backend, dtype, None
        self.stamp = model_stamp(model_dir)
        self.cache_dir = cache_dir
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
        threads = max(1, (os.cpu_count() or 1) // len(devices)) if devices[0] == "cpu" else 1
        ctx = mp.get_context("spawn")  # never fork a process that may hold CUDA or torch threads
        self.conns: list[Connection] = []
        self.procs = []
        for k, dev in enumerate(devices):
            parent, child = ctx.Pipe()
            cache = str(cache_dir / f"shard-{k}.jsonl") if cache_dir is not None else None
            p = ctx.Process(target=_serve, args=(child, str(model_dir), backend, dev, dtype, threads, cache),
                            daemon=True, name=f"pmat-engine-{k}")
            p.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(p)
        self.done = self.cached()  # read once: later outputs are added as they come back
        names = [self._recv(k) for k in range(len(devices))]
        self.name = names[0][1]
        self.device = ",".join(n[2] for n in names)

    @property
    def engines(self) -> int:
        return len(self.conns)

    def encode(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def _recv(self, k: int) -> tuple:
        try:
            msg = self.conns[k].recv()
        except (EOFError, OSError):
            raise RuntimeError(f"generation engine {k} ({self.procs[k].name}) died "
                               f"(exit code {self.procs[k].exitcode})") from None
        if msg[0] == "error":
            raise RuntimeError(f"generation engine {k}: {msg[1]}")
        return msg

    def cached(self) -> dict[str, GenOutput]:
        """Outputs the shards finished earlier (this attempt's or a killed one's)."""
        out: dict[str, GenOutput] = {}
        for path in sorted(self.cache_dir.glob("shard-*.jsonl")) if self.cache_dir else ():
            for rec in read_objects(path):  # a torn last line is skipped (the next append cuts it)
                key = rec.pop("key")
                out[key] = GenOutput(**rec)
        return out

    def generate(self, requests: list[GenRequest]) -> list[GenOutput]:
        keys = [request_key(self.stamp, self.backend, self.dtype, r) for r in requests]
        done = self.done
        # request i always goes to engine i mod N: a resumed call redoes exactly the shards lost
        shards = [[i for i in range(k, len(requests), self.engines) if keys[i] not in done]
                  for k in range(self.engines)]
        for k, idx in enumerate(shards):
            if idx:
                self.conns[k].send(([requests[i] for i in idx], [keys[i] for i in idx], self.max_rows))
        for k, idx in enumerate(shards):
            if idx:
                done.update(zip([keys[i] for i in idx], self._recv(k)[1], strict=True))
        return [done[k] for k in keys]

    def __del__(self) -> None:
        for c in getattr(self, "conns", ()):  # the engines see EOF and exit
            c.close()

    def close(self) -> None:
        for c in self.conns:
            c.close()
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()

