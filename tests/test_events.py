"""Event log: one writer, a reader that resumes, skips partial lines, sees truncation and rotation."""

from __future__ import annotations

import json
import os
import stat

from engine.events import EventReader, EventWriter, read_events
from engine.workspace import Workspace, content_hash


def test_reader_resumes_from_offset_and_holds_partial_line(tmp_path):
    path = tmp_path / "log.jsonl"
    w = EventWriter(path)
    w.emit("progress", done=1, total=10)
    r = EventReader(path)
    assert [e["done"] for e in r.poll()] == [1]
    with open(path, "ab") as fh:
        fh.write(b'{"kind": "progress", "do')  # a writer caught mid-line
    assert r.poll() == []
    with open(path, "ab") as fh:
        fh.write(b'ne": 2}\n')
    assert [e["done"] for e in r.poll()] == [2]
    assert r.poll() == []
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_reader_notices_truncation_and_rotation(tmp_path):
    path = tmp_path / "log.jsonl"
    w = EventWriter(path)
    for i in range(5):
        w.emit("metric", name="loss", value=i)
    r = EventReader(path)
    assert len(r.poll()) == 5
    # truncation: the file shrinks below our offset
    w.close()
    path.write_text(json.dumps({"kind": "metric", "value": 99}) + "\n")
    assert [e["value"] for e in r.poll()] == [99]
    assert r.resets == 1
    # rotation: a new file (new inode) under the same name, even if larger
    path.rename(tmp_path / "log.jsonl.1")
    w2 = EventWriter(path)
    for i in range(10):
        w2.emit("metric", name="loss", value=100 + i)
    assert [e["value"] for e in r.poll()] == list(range(100, 110))
    assert r.resets == 2


def test_reader_skips_garbage_and_handles_100k_events(tmp_path):
    path = tmp_path / "big.jsonl"
    w = EventWriter(path)
    for i in range(100_000):
        w.emit("progress", done=i, total=100_000)
    with open(path, "ab") as fh:
        fh.write(b"not json\n[1,2]\n")
    w.emit("progress", done=100_000, total=100_000)
    r = EventReader(path, _chunk=4096)  # small chunks: lines straddle chunk borders
    events = r.poll()
    assert len(events) == 100_001
    assert [e["done"] for e in events] == list(range(100_001))
    assert r.bad_lines == 2
    assert r.offset == path.stat().st_size


def test_publish_is_atomic_and_hashed(tmp_path):
    ws = Workspace(tmp_path / "ws").init()
    src = tmp_path / "model"
    src.mkdir()
    (src / "a.bin").write_bytes(b"weights")
    (src / "tokenizer.json").write_text("{}")
    expected = content_hash(src)
    m = ws.publish("merge", "model", src)
    assert m["sha256"] == expected
    assert ws.verify("merge", "model")
    assert not src.exists()
    # republishing replaces the old version; tampering breaks verification
    src2 = tmp_path / "model2"
    src2.mkdir()
    (src2 / "a.bin").write_bytes(b"other")
    m2 = ws.publish("merge", "model", src2)
    assert m2["sha256"] != m["sha256"]
    (ws.artifact_path("merge", "model") / "a.bin").write_bytes(b"tampered")
    assert not ws.verify("merge", "model")
    assert stat.S_IMODE(os.stat(ws.root / "artifacts").st_mode) == 0o700
    assert read_events(tmp_path / "missing.jsonl") == []
