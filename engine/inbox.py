"""The supervisor's command inbox, read side: a command counts only from a regular file owned by
the workspace's owner and writable by nobody else, and its sender is that owner (a name in the
file's content proves nothing)."""

from __future__ import annotations

import json
import os
import pwd
import stat
from pathlib import Path
from typing import Any

MAX_COMMAND_BYTES = 1 << 20


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def read_command(path: Path, owner: int) -> tuple[dict[str, Any], str, str | None]:
    """(command, who sent it, why it is refused). Only a regular file owned by the workspace's
    owner and writable by nobody else counts; the sender is that owner, whatever the file says."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        return {}, "?", f"{path}: cannot open: {exc.strerror}"
    try:
        st = os.fstat(fd)
        by = _user_name(st.st_uid)
        if not stat.S_ISREG(st.st_mode):
            return {}, by, f"{path}: not a regular file"
        if st.st_uid != owner:
            return {}, by, f"{path}: owned by {by}, not by the workspace owner {_user_name(owner)}"
        if st.st_mode & 0o022:
            return {}, by, f"{path}: writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
        try:
            cmd = json.loads(os.read(fd, MAX_COMMAND_BYTES))
        except ValueError as exc:
            return {}, by, f"{path}: unreadable command file: {exc}"
    finally:
        os.close(fd)
    if not isinstance(cmd, dict):
        return {}, by, f"{path}: expected a JSON object"
    return cmd, by, None
