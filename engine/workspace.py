"""Where logs, artifacts, results and commands live; atomic, hashed publishing.

Layout of a workspace directory (everything owner-only)::

    spec.yaml                 the pipeline spec
    logs/supervisor.jsonl     the supervisor's journal
    logs/jobs/<job_id>.jsonl  one event log per job attempt
    jobs/<job_id>.json        the resolved job description a stage process runs
    work/<stage>/             a stage's persistent scratch (resume state lives here)
    artifacts/<stage>/<name>  published outputs, each with <name>.manifest.json
    results/ledger.jsonl      append-only results ledger
    commands/                 owner-only inbox of commands for the supervisor
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

DIR_MODE = 0o700
FILE_MODE = 0o600
HASH_CHUNK = 1 << 22


class UnsafeWorkspace(ValueError):
    """Someone other than the owner could change the spec or drop commands: one line."""


def named(exc: OSError, path: Path) -> OSError:
    """The same error naming ``path`` when it named none (ENOSPC from a write names nothing)."""
    return exc if exc.filename else OSError(exc.errno, exc.strerror, str(path))


def ensure_dir(path: Path) -> Path:
    """Create a directory (and parents) owner-only."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    return path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same directory, fsync, rename."""
    path = Path(path)
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise named(exc, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(HASH_CHUNK):
            h.update(block)
    return h.hexdigest()


def tree_files(path: Path) -> list[Path]:
    """Regular files under a directory, sorted by relative path."""
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())


def file_manifest(path: Path, name: str | None = None) -> dict[str, dict[str, Any]]:
    """{relative path: {sha256, bytes}} of a directory tree, or {name: ...} of one file."""
    path = Path(path)
    if path.is_file():
        return {name or path.name: {"sha256": sha256_file(path), "bytes": path.stat().st_size}}
    return {
        p.relative_to(path).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in tree_files(path)
    }


def manifest_digest(files: dict[str, dict[str, Any]]) -> str:
    """Content hash of a manifest: sha256 over sorted 'path sha256' lines."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\t{files[rel]['sha256']}\n".encode())
    return h.hexdigest()


def content_hash(path: Path) -> str:
    """Content hash of a file (its sha256) or a directory (digest of its manifest).

    It does not depend on where the content lies or what the file is called, so a
    published artifact and the directory it came from hash alike.
    """
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    return manifest_digest(file_manifest(path))


def seal_tree(path: Path) -> None:
    """Owner-only modes (whatever the umask of the writer was) and fsync, before publishing."""
    path = Path(path)
    if path.is_dir():
        for d in [path, *(p for p in path.rglob("*") if p.is_dir() and not p.is_symlink())]:
            os.chmod(d, DIR_MODE)
    for p in tree_files(path):
        os.chmod(p, FILE_MODE)
        with open(p, "rb+") as fh:
            os.fsync(fh.fileno())


class Workspace:
    """One pipeline's home on disk."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    # -- layout -----------------------------------------------------------------
    @property
    def spec_path(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def journal_path(self) -> Path:
        return self.logs_dir / "supervisor.jsonl"

    def job_log(self, job_id: str) -> Path:
        return self.logs_dir / "jobs" / f"{job_id}.jsonl"

    def job_file(self, job_id: str) -> Path:
        return self.root / "jobs" / f"{job_id}.json"

    def work_dir(self, stage: str) -> Path:
        return ensure_dir(self.root / "work" / stage)

    def artifact_path(self, stage: str, name: str) -> Path:
        return self.root / "artifacts" / stage / name

    def manifest_path(self, stage: str, name: str) -> Path:
        return self.root / "artifacts" / stage / f"{name}.manifest.json"

    @property
    def ledger_path(self) -> Path:
        return self.root / "results" / "ledger.jsonl"

    @property
    def commands_dir(self) -> Path:
        return self.root / "commands"

    @property
    def lock_path(self) -> Path:
        return self.root / "supervisor.lock"

    def init(self) -> Workspace:
        for d in (self.root, self.logs_dir, self.logs_dir / "jobs", self.root / "jobs",
                  self.root / "work", self.root / "artifacts", self.root / "results",
                  self.commands_dir):
            ensure_dir(d)
        self.check_safe()
        return self

    def check_safe(self) -> None:
        """Refuse (one line) a workspace whose root, layout directories or spec another user
        could write: they could replace ``spec.yaml`` (a ``command`` stage runs anything) or
        drop commands, and it would run as the owner."""
        try:
            owner = os.stat(self.root).st_uid
        except FileNotFoundError:
            return
        for p in (self.root, self.spec_path, self.logs_dir, self.logs_dir / "jobs", self.root / "jobs",
                  self.root / "work", self.root / "artifacts", self.root / "results", self.commands_dir):
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            mode = stat.S_IMODE(st.st_mode)
            if st.st_uid != owner:
                raise UnsafeWorkspace(f"{p}: owned by uid {st.st_uid}, not by the workspace owner (uid {owner})")
            if mode & 0o022 and not stat.S_ISLNK(st.st_mode):
                who = "group and others" if mode & 0o022 == 0o022 else "group" if mode & 0o020 else "others"
                raise UnsafeWorkspace(f"{p}: writable by {who} (mode {mode:04o}); another user could change the "
                                      f"spec or send commands: run `chmod -R go-w {self.root}`")

    # -- artifacts --------------------------------------------------------------
    def publish(self, stage: str, name: str, src: Path, *, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Atomically move ``src`` (file or directory) to ``artifacts/<stage>/<name>``.

        The files are fsynced, hashed into a manifest, renamed into place (an older
        version is renamed aside first and removed after), and the manifest is
        written last: an artifact without a manifest is not published.
        """
        src = Path(src)
        if not src.exists():
            raise FileNotFoundError(f"artifact {stage}/{name}: source {src} does not exist")
        dest = self.artifact_path(stage, name)
        ensure_dir(dest.parent)
        seal_tree(src)
        files = file_manifest(src, name)
        staged = dest.parent / f".{name}.incoming"
        if staged.exists():
            shutil.rmtree(staged) if staged.is_dir() else staged.unlink()
        if src.resolve().parent != dest.parent.resolve() or src.name != staged.name:
            shutil.move(str(src), staged)
        old = dest.parent / f".{name}.old"
        self.manifest_path(stage, name).unlink(missing_ok=True)
        if dest.exists():
            if old.exists():
                shutil.rmtree(old) if old.is_dir() else old.unlink()
            os.replace(dest, old)
        os.replace(staged, dest)
        fsync_dir(dest.parent)
        manifest = {
            "stage": stage,
            "name": name,
            "path": str(dest),
            "kind": "dir" if dest.is_dir() else "file",
            "files": files,
            "sha256": files[name]["sha256"] if dest.is_file() else manifest_digest(files),
            "bytes": sum(f["bytes"] for f in files.values()),
            "meta": meta or {},
        }
        atomic_write_json(self.manifest_path(stage, name), manifest)
        if old.exists():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        return manifest

    def manifest(self, stage: str, name: str) -> dict[str, Any] | None:
        p = self.manifest_path(stage, name)
        if not p.exists():
            return None
        return json.loads(p.read_text())

    def verify(self, stage: str, name: str) -> bool:
        """True when the artifact exists and its files match the manifest."""
        m = self.manifest(stage, name)
        if m is None:
            return False
        path = Path(m["path"])
        return path.exists() and file_manifest(path, name) == m["files"]
