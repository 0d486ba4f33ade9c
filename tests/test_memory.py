"""Memory headroom: MemAvailable and PSI from /proc, admission arithmetic."""

from __future__ import annotations

from engine.memory import GIB, admission_headroom, meminfo, psi_memory, snapshot


def test_probe_reads_this_machine():
    mi = meminfo()
    assert 0 < mi["MemAvailable"] <= mi["MemTotal"]
    snap = snapshot(with_gpu=False)
    assert snap.available == mi["MemAvailable"] or abs(snap.available - mi["MemAvailable"]) < GIB
    psi = psi_memory()
    assert psi is None or ("some" in psi and psi["some"] >= 0)
    assert not snap.unified  # no GPU here: nothing is reported as unified memory


def test_unreached_reservations_are_still_spoken_for():
    # one job reserved 10 GB and uses 2: 8 GB of its reservation are not free for others
    assert admission_headroom(30 * GIB, [(10 * GIB, 2 * GIB)], 2 * GIB) == 20 * GIB
    # a job above its estimate holds nothing back beyond what it uses (already out of MemAvailable)
    assert admission_headroom(30 * GIB, [(4 * GIB, 6 * GIB)], 2 * GIB) == 28 * GIB
    # a budget on a shared box counts what pmat's jobs hold
    assert admission_headroom(100 * GIB, [(10 * GIB, 2 * GIB)], 2 * GIB, budget=40 * GIB) == 30 * GIB
