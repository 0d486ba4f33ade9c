"""One torn-last-line policy for every JSONL file of the engine (engine/jsonl.py): a last line
without its newline is a write in progress, skipped by every reader and cut by the next append;
a damaged complete line is named FILE:LINE; concurrent appenders never interleave."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import jsonl
from engine.chain import append_chained, verify_chain
from engine.events import EventReader, read_events
from engine.jsonl import JsonlError, append_jsonl, last_line, read_objects
from engine.results import make_record, read_ledger
from engine.stages.eval import read_done
from engine.state import load_state
from engine.workspace import Workspace

records = st.lists(st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=20), max_size=4),
                   max_size=6)


@settings(max_examples=60, deadline=None)
@given(recs=records, new=records, cut=st.integers(min_value=1, max_value=200))
def test_torn_tail_is_skipped_by_readers_and_cut_by_the_next_append(tmp_path_factory, recs, new, cut) -> None:
    path = tmp_path_factory.mktemp("j") / "f.jsonl"
    torn = json.dumps({"torn": "x" * 300}).encode()[:cut]  # never a whole line: no newline
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in recs) + torn)
    assert read_objects(path) == recs
    assert read_events(path) == recs
    assert last_line(path) == (json.dumps(recs[-1]).encode() if recs else b"")
    append_jsonl(path, new)
    assert read_objects(path) == recs + new
    assert path.read_bytes().endswith(b"\n") or not new  # the torn tail was cut, not glued to the new line


def test_a_damaged_line_is_named_by_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "work.jsonl"
    path.write_text('{"task_id": "a"}\n{"task_id": \n[1, 2]\n\n{"task_id": "b"}\n{"task_id": "c"')
    with pytest.raises(JsonlError, match=f"^{path}:2: not a JSON object$"):
        read_objects(path)
    problems: list[str] = []
    assert read_objects(path, problems) == [{"task_id": "a"}, {"task_id": "b"}]
    assert problems == [f"{path}:2: not a JSON object", f"{path}:3: not a JSON object"]
    damaged: list[str] = []
    assert set(read_done(path, damaged)) == {"a", "b"}  # the eval stage runs the damaged problems again
    assert damaged == problems
    assert read_objects(tmp_path / "missing.jsonl") == []


def test_incremental_reader_holds_the_torn_line_until_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"kind": "a", "ts": 1}\n{"kind": "b"')
    reader = EventReader(path)
    assert [e["kind"] for e in reader.poll()] == ["a"]
    with open(path, "ab") as fh:
        fh.write(b', "ts": 2}\n')
    assert [e["kind"] for e in reader.poll()] == ["b"] and reader.bad_lines == 0


def test_ledger_journal_and_fold_ignore_a_torn_tail(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws").init()
    rec = make_record(benchmark="b", model_hash="m", model_path="/m", dataset_hash="d", protocol={}, metrics={"x": 1})
    append_chained(ws.ledger_path, [rec])
    append_chained(ws.journal_path, [{"ts": 1.0, "kind": "queued", "stage": "s"}])
    before = (read_ledger(ws), verify_chain(ws.journal_path), load_state(ws).stages["s"].status)
    for path in (ws.ledger_path, ws.journal_path):
        with open(path, "ab") as fh:
            fh.write(b'{"ts": 2.0, "kind": "queued", "sta')
    after = (read_ledger(ws), verify_chain(ws.journal_path), load_state(ws).stages["s"].status)
    assert after == before and before[1].ok and load_state(ws).bad_events == 0
    append_chained(ws.ledger_path, [rec])  # chains on from the last complete line
    assert verify_chain(ws.ledger_path).ok and len(read_ledger(ws)) == 2


_APPENDER = """
import sys
from engine.jsonl import append_jsonl
k = int(sys.argv[2])
for i in range(40):
    append_jsonl(sys.argv[1], [{"writer": k, "i": i, "pad": "x" * (70_000 if i % 5 == 0 else i)}] * (1 + i % 3))
"""


def test_concurrent_appenders_never_interleave_or_cut_each_other(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", _APPENDER, str(path), str(k)]) for k in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    recs = read_objects(path)  # raises on any interleaved (damaged) line
    assert len(recs) == 4 * sum(1 + i % 3 for i in range(40))
    for k in range(4):
        assert sorted({r["i"] for r in recs if r["writer"] == k}) == list(range(40))


def test_tail_reads_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonl, "_TAIL_BLOCK", 7)  # every line straddles blocks
    path = tmp_path / "f.jsonl"
    for tail in (b"", b'{"to', b"\n", b'{"a": 1}'):
        path.write_bytes(b'{"first": 1}\n' + b'{"second": "' + b"y" * 20 + b'"}\n' + tail)
        last = b"" if tail == b"\n" else b'{"second": "' + b"y" * 20 + b'"}'
        assert last_line(path) == last
        append_jsonl(path, [{"n": 3}])
        assert read_objects(path) == [{"first": 1}, {"second": "y" * 20}, {"n": 3}]
    path.write_bytes(b'{"only": "torn')
    assert last_line(path) == b""
    append_jsonl(path, [{"n": 1}])
    assert path.read_bytes() == b'{"n": 1}\n'
