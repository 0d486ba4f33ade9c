"""The console under load: first frame, idle CPU, event-to-screen latency, RSS with a 1 GB log.

A generated workspace of 200 jobs and 100k events; the console runs in a child
process, headless (real watchfiles, real refresh path, Textual's compositor renders
every frame; only the terminal write is absent) or, with --tmux, in a tmux pane. Baselines run in the same
invocation: the bare state fold (first frame), the console with no writers (CPU),
the console on a small log (RSS).

    python bench/console.py [--jobs 200] [--events 100000] [--seconds 15] [--big-mb 1024] [--tmux]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

FIRST_FRAME_S = 1.0
IDLE_CPU = 0.02
P95_S = 0.3
RSS_MB = 200


def _status(path: str = "self") -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{path}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


# -- child: the console, headless --------------------------------------------------
def child(ws_root: str, seconds: float, out: str, log: str | None, terminal: bool) -> None:
    from engine.workspace import Workspace
    from pmat_tui.app import PmatApp

    class BenchApp(PmatApp):
        """Stamps, after each repaint that followed a fold, what the DAG rows show."""

        stamps: list[tuple[float, dict[str, float]]] = []
        first_frame: float | None = None
        first_frame_cpu: float | None = None

        def do_refresh(self, force: bool = False, redraw: bool = False) -> None:
            super().do_refresh(force, redraw)
            self.call_after_refresh(self._stamp)

        def _stamp(self) -> None:
            now = time.time()
            if self.first_frame is None:
                self.first_frame = now
                self.first_frame_cpu = time.process_time()
                self.set_timer(0.05, ready)
                self.set_timer(seconds, self.exit)
            self.stamps.append((now, {r.stage: r.done or 0 for r in self.model.rows.values() if r.status == "running"}))

    t0 = time.time()
    app = BenchApp(Workspace(Path(ws_root)), readonly=True)
    if log:
        app.log_target = log

    def ready() -> None:
        if log:
            app.switch_mode("log")
        Path(out + ".ready").write_text(json.dumps({"pid": os.getpid(), "first_frame": app.first_frame}))

    app.run(headless=not terminal, size=None if terminal else (160, 48))
    Path(out).write_text(json.dumps({"t0": t0, "first_frame": app.first_frame, "cpu": app.first_frame_cpu,
                                     "stamps": app.stamps, **_status()}))


class Child:
    """The console in a child process: headless, or in a real terminal (a tmux pane)."""

    def __init__(self, ws: Path, seconds: float, out: Path, log: str | None = None, tmux: bool = False) -> None:
        argv = [sys.executable, __file__, "--child", str(ws), "--seconds", str(seconds), "--out", str(out)]
        argv += ["--log", log] if log else []
        self.out, self.tmux, self.proc = out, tmux, None
        self.start = time.time()
        if tmux:
            cmd = " ".join(argv + ["--terminal"])
            subprocess.run(["tmux", "new-session", "-d", "-s", f"pmatbench{os.getpid()}", "-x", "160", "-y", "48",
                            "-c", os.getcwd(), cmd], check=True)
        else:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ready = Path(str(out) + ".ready")
        deadline = time.time() + 600
        while not ready.exists():
            if (self.proc is not None and self.proc.poll() is not None) or time.time() > deadline:
                raise SystemExit(f"console child failed: {self.proc.stderr.read().decode()[-2000:] if self.proc else 'tmux'}")
            time.sleep(0.01)
        time.sleep(0.05)
        self.pid = json.loads(ready.read_text())["pid"]

    def wait(self) -> dict:
        while not self.out.exists():
            time.sleep(0.05)
        time.sleep(0.1)
        if self.proc is not None:
            self.proc.wait()
        if self.tmux:
            subprocess.run(["tmux", "kill-session", "-t", f"pmatbench{os.getpid()}"], capture_output=True)
        return json.loads(self.out.read_text())


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def writer(path: Path, rate: float, seconds: float, start_done: int, total: int, log: list) -> None:
    """Append progress events at ``rate`` per second, one write() per line, as a job does."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    done = start_done
    next_t = time.monotonic()
    end = next_t + seconds
    while next_t < end:
        done += 1
        ts = time.time()
        os.write(fd, (json.dumps({"ts": ts, "kind": "progress", "done": done, "total": total, "unit": "items"}) + "\n").encode())
        log.append((ts, done))
        next_t += 1 / rate
        time.sleep(max(0.0, next_t - time.monotonic()))
    os.close(fd)


def big_log(path: Path, mb: int) -> int:
    """A job log of ``mb`` MiB: progress and metric events (about 200 bytes a line)."""
    lines = []
    t = 1_790_000_000.0
    for i in range(20_000):
        lines.append(json.dumps({"ts": t + i, "kind": "metric", "name": "loss", "value": 1 / (i + 1), "step": i,
                                 "detail": "x" * 120}))
    block = ("\n".join(lines) + "\n").encode()
    with open(path, "ab") as fh:
        n = 0
        while n < mb << 20:
            fh.write(block)
            n += len(block)
    return n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--big-mb", type=int, default=1024)
    ap.add_argument("--child")
    ap.add_argument("--out")
    ap.add_argument("--log")
    ap.add_argument("--terminal", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tmux", action="store_true", help="run the console in a real terminal (a tmux pane), not headless")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.seconds, args.out, args.log, args.terminal)
        return 0

    from engine.state import load_state
    from pmat_tui.fixture import write_bench, write_fixture

    tmp = Path(tempfile.mkdtemp(prefix="pmat-bench-console-"))
    ws = write_bench(tmp / "ws", args.jobs, args.events * 5 // 6)
    n_events = sum(sum(1 for _ in open(p, "rb")) for p in (ws.logs_dir / "jobs").glob("*.jsonl"))
    t = time.perf_counter()
    load_state(ws)
    fold = time.perf_counter() - t
    print(f"workspace: {args.jobs} jobs, {n_events} job events; bare state fold {fold:.3f} s (baseline)")

    # 1) first frame, 2) idle CPU with and without writers, 3) latency
    total = args.seconds + 8
    con = Child(ws.root, total, tmp / "a.json", tmux=args.tmux)
    time.sleep(2.0)
    c0, w0 = cpu_s(con.pid), time.monotonic()
    time.sleep(3.0)
    idle_base = (cpu_s(con.pid) - c0) / (time.monotonic() - w0)
    running = [f"s{k:03d}" for k in range(args.jobs - 3, args.jobs)]
    logs: dict[str, list] = {s: [] for s in running}
    per_job = args.events * 5 // 6 // args.jobs
    threads = [threading.Thread(target=writer, args=(ws.job_log(f"{s}.1"), 10.0, args.seconds, per_job * 4, per_job * 100, logs[s]))
               for s in running]
    c0, w0 = cpu_s(con.pid), time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    busy = (cpu_s(con.pid) - c0) / (time.monotonic() - w0)
    res = con.wait()
    first_frame = res["first_frame"] - con.start
    in_process = res["first_frame"] - res["t0"]
    lat = []
    stamps = res["stamps"]
    for s, written in logs.items():
        j = 0
        for ts, done in written:
            while j < len(stamps) and (stamps[j][0] < ts or stamps[j][1].get(s, 0) < done):
                j += 1
            if j < len(stamps):
                lat.append(stamps[j][0] - ts)
    lat.sort()
    p50 = lat[len(lat) // 2] if lat else float("nan")
    p95 = lat[int(len(lat) * 0.95)] if lat else float("nan")
    print(f"first full frame {first_frame:.3f} s from process start ({in_process:.3f} s after imports; "
          f"{res['cpu']:.3f} s of CPU time, imports included); ratio to bare fold {in_process / fold:.1f}x")
    print(f"load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"console CPU: {100 * busy:.2f}% of a core with 3 jobs x 10 events/s; {100 * idle_base:.2f}% with no writers")
    print(f"event -> screen latency over {len(lat)} of {sum(map(len, logs.values()))} events: p50 {1000 * p50:.0f} ms, p95 {1000 * p95:.0f} ms")

    # 4) RSS with a 1 GB log open in the log view (baseline: the same view on a small log)
    small = write_fixture(tmp / "small")
    base = Child(small.root, 3.0, tmp / "small.json", log="sample.1", tmux=args.tmux).wait()
    big = write_fixture(tmp / "big")
    size = big_log(big.job_log("sample.1"), args.big_mb)
    con = Child(big.root, 3.0, tmp / "big.json", log="sample.1", tmux=args.tmux)
    got = con.wait()
    rss_mb, hwm_mb = got["VmRSS"] / 2**20, got["VmHWM"] / 2**20
    print(f"log of {size / 2**20:.0f} MiB open: RSS {rss_mb:.0f} MB, peak {hwm_mb:.0f} MB "
          f"(small log: {base['VmRSS'] / 2**20:.0f} MB; ratio {got['VmRSS'] / base['VmRSS']:.2f}x); "
          f"first full frame {got['first_frame'] - con.start:.1f} s (the fold reads the whole log once)")

    def line(name: str, value: float, target: float, fmt: str) -> None:
        print(f"BENCH {name} {value:{fmt}} {target:{fmt}} {'PASS' if value <= target else 'MISS'}")

    line("console_first_frame_s", first_frame, FIRST_FRAME_S, ".3f")
    line("console_idle_cpu_frac", busy, IDLE_CPU, ".4f")
    line("console_latency_p95_s", p95, P95_S, ".3f")
    line("console_rss_1gb_log_mb", max(rss_mb, hwm_mb), RSS_MB, ".0f")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
