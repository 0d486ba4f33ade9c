"""Run every hostile program through one pool and print a JSON report; run as any user.

    python tests/redteam/suite.py '{"outside": DIR, "dataset": FILE, "repo": DIR, "outer": "auto"}'

Each hostile program is followed by a correct one, so each slot meets a correct program
right after a hostile one. The caller (tests/test_redteam.py) judges the report and the
files around it.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from programs import GOOD, TEST, WRONG, hostile  # noqa: E402

from engine.sandbox.pool import Job, Limits, SandboxPool  # noqa: E402

SECRET_ENV = "PMAT_REDTEAM_SECRET"


def main() -> None:
    cfg = json.loads(sys.argv[1])
    programs = hostile(cfg["outside"], cfg["dataset"], cfg["repo"], SECRET_ENV)
    limits = Limits(memory_mb=256, cpu_s=4, fsize_mb=8, nofile=64, disk_mb=32)
    t0 = time.monotonic()
    with SandboxPool(workers=4, limits=limits, outer=cfg.get("outer", "auto"),
                     landlock=cfg.get("landlock", True)) as pool:
        startup_s = time.monotonic() - t0
        names = list(programs)
        jobs = []
        for name in names:
            program, tests = programs[name]
            jobs += [Job(program, tests, timeout=3.0), Job(GOOD, TEST, timeout=10.0)]
        verdicts = pool.run_many(jobs)
        final = pool.run_many([Job(GOOD, TEST), Job(WRONG, TEST)])
        report = {
            "hostile": {n: verdicts[2 * i].to_dict() for i, n in enumerate(names)},
            "good_after": {n: verdicts[2 * i + 1].status for i, n in enumerate(names)},
            "final": [v.status for v in final], "healthy": pool.healthy(), "isolation": pool.isolation(),
            "startup_s": round(startup_s, 3), "uid": os.geteuid(), "tmpdir": os.environ.get("TMPDIR", ""),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
