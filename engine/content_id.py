"""Checkpoint identity is its content: verified content hashes through a safe cache.

A stage artifact's bytes are hashed and must agree with its manifest (else the artifact is
corrupt: never a hash to trust). The cache saves work only while a file's device, inode,
size, mtime_ns and ctime_ns are unchanged, and its persisted entries are sealed with the
user's key (``engine.chain.user_key``), so an entry written by hand is never trusted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from engine.chain import seal, sealed, user_key
from engine.refs import resolve_ref
from engine.spec import REF_RE, PipelineSpec
from engine.workspace import Workspace, atomic_write_json, manifest_digest, sha256_file, tree_files


class CorruptArtifact(ValueError):
    """An artifact whose bytes disagree with its manifest: never a hash to trust."""


class HashCache:
    """sha256 of files, reused only while a file's (device, inode, size, mtime_ns, ctime_ns)
    is unchanged: a file replaced in place, even with its size and mtime restored, has a
    new ctime. ``full`` re-hashes every byte (approval, submission); only callers that
    own the workspace ``persist`` the cache (a read-only console or status writes nothing).
    """

    _memory: ClassVar[dict[str, list[Any]]] = {}  # shared by the callers of one process

    def __init__(self, ws: Workspace, *, persist: bool = False, full: bool = False) -> None:
        self.path = ws.root / "state" / "hash-cache.json"
        self.persist, self.full, self.dirty = persist, full, False
        self.key = user_key(create=persist)
        try:
            self.data: dict[str, list[Any]] = json.loads(self.path.read_text()) if self.key else {}
        except (OSError, ValueError):
            self.data = {}
        if not isinstance(self.data, dict):
            self.data = {}

    def _mac(self, key: str, fp: list[int], digest: str) -> str:
        return seal(key, json.dumps(fp), digest, key=self.key)

    @staticmethod
    def _fingerprint(path: Path) -> list[int]:
        st = path.stat()
        return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]

    def _hit(self, key: str, fp: list[int]) -> str | None:
        if self.full:
            return None
        mem = self._memory.get(key)
        if mem and mem[0] == fp:
            return str(mem[1])
        hit = self.data.get(key)
        if (isinstance(hit, list) and len(hit) == 3 and hit[0] == fp and isinstance(hit[1], str)
                and sealed(hit[2], key, json.dumps(fp), hit[1], key=self.key)):
            return hit[1]
        return None

    def file_hash(self, path: Path) -> str:
        key, fp = str(path), self._fingerprint(path)
        if (hit := self._hit(key, fp)) is not None:
            return hit
        digest = sha256_file(path)
        if self._fingerprint(path) == fp:  # unchanged while it was read: worth remembering
            self._memory[key] = [fp, digest]
            self.data[key] = [fp, digest, self._mac(key, fp, digest)]
            self.dirty = True
        return digest

    def content_hash(self, path: Path) -> str:
        """``engine.workspace.content_hash`` of a file or directory, through the cache."""
        path = Path(path)
        if path.is_file():
            return self.file_hash(path)
        return manifest_digest({p.relative_to(path).as_posix(): {"sha256": self.file_hash(p)} for p in tree_files(path)})

    def save(self) -> None:
        if self.persist and self.dirty and self.key:
            atomic_write_json(self.path, self.data)
            self.dirty = False


def ref_hash(spec: PipelineSpec, ws: Workspace, ref: str, cache: HashCache) -> str | None:
    """Verified content hash of a reference (None if it does not exist yet).

    A stage artifact's bytes are hashed and must agree with its manifest; a manifest
    that disagrees (weights replaced in place) raises ``CorruptArtifact``.
    """
    m = REF_RE.match(ref)
    if m and m.group(1) == "model" and spec.models[m.group(2)].artifact:
        return ref_hash(spec, ws, spec.models[m.group(2)].artifact, cache)
    if m and m.group(3):
        return artifact_hash(ws, m.group(3), m.group(4), cache)
    path = Path(resolve_ref(spec, ws, ref, ws.spec_path.parent))
    return cache.content_hash(path) if path.exists() else None


def artifact_hash(ws: Workspace, stage: str, name: str, cache: HashCache) -> str | None:
    """Content hash of a published artifact, checked against its manifest (None: unpublished)."""
    mpath = ws.manifest_path(stage, name)
    try:
        manifest = ws.manifest(stage, name)
    except (OSError, ValueError) as exc:
        raise CorruptArtifact(f"{mpath}: unreadable manifest ({exc}): a corrupt artifact") from None
    if manifest is None:
        return None
    if not isinstance(manifest, dict):
        raise CorruptArtifact(f"{mpath}: not a manifest (a JSON object): a corrupt artifact")
    path = ws.artifact_path(stage, name)
    if not path.exists():
        raise CorruptArtifact(f"{path}: missing, though {mpath.name} lists it: a corrupt artifact")
    digest = cache.content_hash(path)
    if digest != manifest.get("sha256"):
        raise CorruptArtifact(f"{path}: content sha256 {digest[:12]} differs from its manifest's "
                              f"{str(manifest.get('sha256'))[:12]}: a corrupt artifact (re-run {stage})")
    return digest
