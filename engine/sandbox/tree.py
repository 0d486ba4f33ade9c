"""Removal of a directory tree that a hostile program made: any depth, any modes, any names.

``shutil.rmtree`` recurses (a 3,000-deep chain raises ``RecursionError``) and works on
paths (a deep one exceeds ``PATH_MAX``). This walks down and up again with one directory
descriptor at a time (``..`` relative to the current one), unlinks relative to it, fixes
the modes it needs on the way, never follows a symbolic link, and never raises: what it
could not remove is reported, not fatal.
"""

from __future__ import annotations

import errno
import os
import stat

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(name: str, parent: int | None) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except PermissionError:  # a mode-000 directory of the same owner: make it ours again
        os.chmod(name, 0o700, dir_fd=parent)
        return os.open(name, _DIR_FLAGS, dir_fd=parent)


def _unlink_entry(name: str, fd: int) -> bool:
    """Remove ``name`` in ``fd`` if it is not a non-empty directory; False if it is one."""
    try:
        os.unlink(name, dir_fd=fd)
        return True
    except IsADirectoryError:
        pass
    except OSError as exc:
        if exc.errno != errno.EPERM:  # EPERM: Linux's answer for unlink of a directory
            raise
        if not stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
            raise
    try:
        os.rmdir(name, dir_fd=fd)
        return True
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    return False


def remove_tree(path: str, max_steps: int = 10_000_000) -> str | None:
    """Remove ``path`` and everything beneath it; None when done, else why not (never raises)."""
    fd = -1
    try:
        try:
            fd = _open_dir(path, None)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            os.unlink(path)
            return None
        depth = 0
        for _ in range(max_steps):
            try:
                os.fchmod(fd, 0o700)
            except OSError:
                pass
            child = None
            with os.scandir(fd) as entries:
                for entry in entries:
                    if not _unlink_entry(entry.name, fd):
                        child = entry.name
                        break
            if child is not None:
                down = _open_dir(child, fd)
                os.close(fd)
                fd, depth = down, depth + 1
                continue
            if depth == 0:
                os.close(fd)
                fd = -1
                os.rmdir(path)
                return None
            up = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd, depth = up, depth - 1
        return f"{path}: more than {max_steps} steps"
    except OSError as exc:
        return f"{path}: {type(exc).__name__}: {exc}"
    finally:
        if fd >= 0:
            os.close(fd)
