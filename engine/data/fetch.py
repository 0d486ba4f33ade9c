"""Download an official benchmark file, verify it against its pin, record it in the workspace.

A download goes to ``data/<id>/<filename>.part`` and resumes from there (HTTP Range) after a cut
connection; only a file whose sha256 matches the pin is renamed onto ``data/<id>/<filename>``,
so a partial or wrong file never replaces a good one. ``data/datasets.json`` records what was
fetched (path, sha256, URL, who pinned it); specs name datasets by id (``{id: humaneval_plus}``)
and resolve to that record, and a user may pin a file of their own (``{path, sha256}``).
"""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.data.pins import DatasetPin, pin_for
from engine.workspace import atomic_write_json, ensure_dir, fsync_dir, sha256_file

CHUNK = 1 << 16
RECORD = Path("data") / "datasets.json"


class FetchError(ValueError):
    """A download or verification that failed; the message is one line naming file, URL and value."""


class ConnectionCut(FetchError):
    """The transfer stopped early; the ``.part`` file keeps what came, the next fetch resumes."""


class NotFetched(FetchError):
    """The workspace has no record of the dataset."""


@dataclass(frozen=True)
class DataFile:
    """A verified data file: its sha256 and who vouches for it ("project": the project's pin,
    "user": a sha256 the user pinned explicitly in the spec or on the command line)."""

    path: Path
    sha256: str
    pinned_by: str


def _sha256_arg(value: str | None, what: str) -> str | None:
    """A user's sha256 as lowercase hex, or a one-line error naming where it came from."""
    if value is None:
        return None
    v = value.strip().lower()
    if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise FetchError(f"{what}: {value!r} is not a sha256 (64 hex digits)")
    return v


def check_file(path: Path, dataset_id: str, pinned_sha256: str | None = None) -> DataFile:
    """Verify ``path`` as dataset ``dataset_id``: it must match the project's pin, or the
    sha256 the user pinned explicitly; anything else is refused with one line."""
    pin = pin_for(dataset_id)
    pinned_sha256 = _sha256_arg(pinned_sha256, f"{dataset_id}: pinned sha256")
    path = Path(path)
    if not path.is_file():
        raise FetchError(f"{dataset_id}: {path} does not exist (pmat data fetch {dataset_id})")
    digest = sha256_file(path)
    if pinned_sha256:
        if digest != pinned_sha256:
            raise FetchError(f"{dataset_id}: {path} has sha256 {digest}, the spec pins {pinned_sha256}; refused")
        return DataFile(path, digest, "project" if digest in pin.digests else "user")
    if digest in pin.digests:
        return DataFile(path, digest, "project")
    if not pin.digests:
        raise FetchError(f"{dataset_id}: no sha256 is pinned for {pin.filename} (engine/data/pins.py); "
                         f"pin {path} explicitly (datasets.NAME.sha256 in the spec) to use it; refused")
    raise FetchError(f"{dataset_id}: {path} has sha256 {digest}, expected {pin.sha256} "
                     f"({pin.filename} {pin.version}); refused")


def _records(ws_root: Path) -> dict[str, Any]:
    path = Path(ws_root) / RECORD
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FetchError(f"{path}: unreadable ({exc}); fetch the datasets again") from None
    if not isinstance(data, dict):
        raise FetchError(f"{path}: not a JSON object; fetch the datasets again")
    return data


def dest_path(ws_root: Path, dataset_id: str) -> Path:
    """Where ``pmat data fetch`` puts ``dataset_id`` (what a spec's ``{id: ...}`` resolves to:
    a stage reading it verifies the bytes, so a missing or altered file fails that stage)."""
    return Path(ws_root) / "data" / dataset_id / pin_for(dataset_id).filename


def user_pin(ws_root: Path, dataset_id: str) -> str | None:
    """The sha256 the user pinned when fetching ``dataset_id`` (``--sha256``), else None."""
    rec = _records(ws_root).get(dataset_id) or {}
    return rec.get("sha256") if rec.get("pinned_by") == "user" else None


def recorded(ws_root: Path, dataset_id: str, pinned_sha256: str | None = None) -> DataFile:
    """The workspace's fetched file of ``dataset_id``, re-verified (what ``{id: ...}`` resolves to);
    ``pinned_sha256``: the hash the spec pins for it."""
    rec = _records(ws_root).get(dataset_id)
    if rec is None:
        raise NotFetched(f"dataset {dataset_id!r} is not fetched into {ws_root}: "
                         f"pmat data fetch {dataset_id} --workspace {ws_root}")
    user_pin = pinned_sha256 or (rec["sha256"] if rec["pinned_by"] == "user" else None)
    return check_file(Path(ws_root) / rec["path"], dataset_id, user_pin)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive flock on a directory (no lock file left behind)."""
    fd = os.open(ensure_dir(directory), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _record(ws_root: Path, pin: DatasetPin, data: DataFile, url: str) -> dict[str, Any]:
    entry = {
        "path": str(data.path.relative_to(ws_root)), "sha256": data.sha256, "pinned_by": data.pinned_by,
        "url": url, "version": pin.version, "pin_source": pin.source if data.pinned_by == "project" else "user",
        "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with _locked(Path(ws_root) / RECORD.parent):  # fetches of other datasets update the same file
        records = _records(ws_root)
        records[pin.id] = entry
        atomic_write_json(Path(ws_root) / RECORD, records)
    return entry


def _download(url: str, part: Path, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (HTTP Range from its size); a cut keeps what came."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - the pins' URLs or the user's
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part already holds the whole file
            return
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise FetchError(f"{url}: {getattr(exc, 'reason', exc)}") from None
    with resp, open(part, "ab" if resp.status == 206 else "wb") as fh:  # 200: Range ignored, start over
        expected, got, cut = resp.headers.get("Content-Length"), 0, None
        while True:
            try:
                chunk = resp.read(CHUNK)
            except (http.client.IncompleteRead, OSError) as exc:
                cut = type(exc).__name__
                break
            if not chunk:
                break
            fh.write(chunk)
            got += len(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    if cut or (expected is not None and got < int(expected)):
        raise ConnectionCut(f"{url}: connection cut after {part.stat().st_size} bytes{f' ({cut})' if cut else ''}; "
                            f"run the fetch again to resume")


def fetch(ws_root: Path, dataset_id: str, url: str | None = None, *, sha256: str | None = None,
          timeout: float = 60.0) -> dict[str, Any]:
    """Fetch ``dataset_id`` into the workspace and record it; the record, or a one-line FetchError.

    ``sha256`` pins the file explicitly (for a dataset the project has no pin for, or another
    release); it is recorded as pinned by the user.
    """
    pin = pin_for(dataset_id)
    expected = _sha256_arg(sha256, f"{dataset_id}: --sha256") or pin.sha256
    if expected is None:
        raise FetchError(f"{dataset_id}: no sha256 is pinned for {pin.filename} (engine/data/pins.py: "
                         f"{pin.source}); pass --sha256 to pin it yourself; refused")
    ws_root = Path(ws_root)
    dest = dest_path(ws_root, pin.id)
    ensure_dir(dest.parent)
    part = dest.with_name(dest.name + ".part")
    urls = (url,) if url else pin.urls
    who = "project" if expected in pin.digests else "user"
    if dest.exists() and sha256_file(dest) == expected:  # already here: keep the record of where it came from
        known = _records(ws_root).get(pin.id)
        if known and known.get("sha256") == expected and known.get("pinned_by") == who:
            return known
        return _record(ws_root, pin, DataFile(dest, expected, who), "(already in the workspace)")
    errors: list[str] = []
    with _locked(dest.parent):  # two fetches of one dataset would interleave one .part
        for u in urls:
            for attempt in (1, 2):
                resumed = part.exists()
                try:
                    _download(u, part, timeout)
                except ConnectionCut:
                    raise
                except FetchError as exc:
                    errors.append(str(exc))
                    break
                except OSError as exc:  # writing the part (disk full): what came stays resumable
                    raise FetchError(f"{dataset_id}: writing {part}: {exc}") from None
                digest = sha256_file(part)
                if digest == expected:
                    os.replace(part, dest)
                    fsync_dir(dest.parent)
                    return _record(ws_root, pin, DataFile(dest, digest, who), u)
                part.unlink()  # a wrong file is not resumable: start from zero
                if resumed and attempt == 1:
                    continue  # the part may have been another file's: one fresh download decides
                raise FetchError(f"{dataset_id}: {u} gave sha256 {digest}, expected {expected} "
                                 f"({'engine/data/pins.py' if who == 'project' else '--sha256'}); "
                                 f"refused, {dest} unchanged")
    raise FetchError(f"{dataset_id}: no URL gave the file: {'; '.join(errors)}")
