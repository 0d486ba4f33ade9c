"""engine/chain.py: the hash chain of the results ledger and the supervisor journal."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from engine.chain import accept_break, append_chained, line_digest, verify_chain


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def test_appended_lines_chain_and_verify(tmp_path):
    p = tmp_path / "ledger.jsonl"
    d1 = append_chained(p, [{"a": 1}, {"a": 2}])
    d2 = append_chained(p, [{"a": 3}])
    lines = _lines(p)
    assert [line_digest(x) for x in lines] == d1 + d2
    assert json.loads(lines[0])["prev"] == ""
    assert json.loads(lines[2])["prev"] == d1[1]
    rep = verify_chain(p)
    assert rep.ok and [r["a"] for r in rep.records] == [1, 2, 3] and rep.lines == [1, 2, 3]


def test_an_edited_line_breaks_the_chain_after_it(tmp_path):
    p = tmp_path / "ledger.jsonl"
    append_chained(p, [{"v": 0.1}, {"v": 0.2}, {"v": 0.3}])
    p.write_bytes(p.read_bytes().replace(b'"v": 0.2', b'"v": 0.9'))
    rep = verify_chain(p)
    assert rep.broken_line == 3 and f"{p}:3" in rep.reason  # line 3 no longer follows the edited line 2
    # the edited line itself still chains: the ledger's provenance check (the writing job's
    # log holds each record's digest) is what catches an edit of the last line
    assert [r["v"] for r in rep.records] == [0.1, 0.9]


def test_a_hand_appended_or_removed_line_breaks_the_chain(tmp_path):
    p = tmp_path / "j.jsonl"
    append_chained(p, [{"k": 1}, {"k": 2}, {"k": 3}])
    lines = _lines(p)
    p.write_bytes(b"\n".join([lines[0], lines[2]]) + b"\n")
    assert verify_chain(p).broken_line == 2
    p.write_bytes(b"\n".join(lines) + b'\n{"k": 4}\n')
    rep = verify_chain(p)
    assert rep.broken_line == 4 and "no chain digest" in rep.reason and len(rep.records) == 3
    p.write_bytes(b"\n".join(lines) + b"\nnot json\n")
    assert verify_chain(p).broken_line == 4


def test_a_torn_last_line_is_ignored_and_cut_by_the_next_append(tmp_path):
    p = tmp_path / "l.jsonl"
    append_chained(p, [{"k": 1}])
    with open(p, "ab") as fh:
        fh.write(b'{"k": 2, "pr')
    rep = verify_chain(p)
    assert rep.ok and len(rep.records) == 1
    append_chained(p, [{"k": 3}])
    rep = verify_chain(p)
    assert rep.ok and [r["k"] for r in rep.records] == [1, 3]


def test_accepting_a_break_counts_the_file_as_it_is_until_edited_again(tmp_path):
    p = tmp_path / "l.jsonl"
    append_chained(p, [{"k": 1}, {"k": 2}])
    with open(p, "ab") as fh:
        fh.write(b'{"k": 3}\n')
    assert verify_chain(p).broken_line == 3
    assert accept_break(p).ok
    append_chained(p, [{"k": 4}])
    rep = verify_chain(p)
    assert rep.ok and [r["k"] for r in rep.records] == [1, 2, 3, 4]
    p.write_bytes(p.read_bytes().replace(b'"k": 1', b'"k": 7'))  # the accepted prefix changed
    assert verify_chain(p).broken_line == 2


def test_concurrent_appenders_keep_one_chain(tmp_path):
    p = tmp_path / "l.jsonl"
    code = ("import sys; from engine.chain import append_chained\n"
            "for i in range(40): append_chained(sys.argv[1], [{'w': sys.argv[2], 'i': i}])")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(p), w]) for w in "ab"]
    assert all(pr.wait() == 0 for pr in procs)
    rep = verify_chain(p)
    assert rep.ok and len(rep.records) == 80


def test_an_acceptance_written_by_hand_is_not_an_acceptance(tmp_path):
    p = tmp_path / "journal.jsonl"
    append_chained(p, [{"k": 1}])
    with open(p, "ab") as fh:
        fh.write(b'{"kind": "approval_granted"}\n')
    accept_break(p)
    acc = json.loads((tmp_path / "journal.jsonl.accepted").read_text())
    with open(p, "ab") as fh:
        fh.write(b'{"kind": "approval_granted", "again": 1}\n')
    data = p.read_bytes()
    forged = {**acc, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "lines": 3,
              "last": line_digest(data.split(b"\n")[-2])}
    (tmp_path / "journal.jsonl.accepted").write_text(json.dumps(forged))
    assert verify_chain(p).broken_line == 2
