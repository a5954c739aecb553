"""`make venv`: install the project (editable, with its dev extras) into a virtualenv with uv.

Why uv: pip resolves, unpacks and compiles ~220 packages one after another (~110 s here, a
third of it compiling bytecode); uv does the same in parallel (~35 s). Why this script: uv
reads no pip configuration, and this machine's pip configuration is what makes
``torch==2.13.0`` the CPU build (a local wheel in ``find-links``), so the sources pip is
configured with (``pip config list``: index-url, extra-index-url, find-links, constraint,
no-index; environment over the ``install`` section over ``global``, as pip reads them) are
passed to uv, which then picks the best version across all of them, as pip does. If uv
fails, pip installs as before.

Usage: ``python tools/install_venv.py VENV_PYTHON [REQUIREMENT ...]`` (default ``-e .[dev]``);
uv itself must be installed in that environment (the Makefile pins it).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

# pip option -> uv option; values are whitespace-separated lists in pip's configuration
OPTIONS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url",
           "find-links": "--find-links", "constraint": "--constraint"}
SCOPES = (":env:", "install", "global")   # pip's precedence, highest first


def pip_sources(python: str) -> list[str]:
    """uv arguments for the package sources pip is configured with."""
    listed = subprocess.run([python, "-m", "pip", "config", "list"], check=True,
                            capture_output=True, text=True).stdout
    found: dict[tuple[str, str], str] = {}
    for line in listed.splitlines():
        key, sep, value = line.partition("=")
        scope, _, name = key.rpartition(".")
        if sep and scope in SCOPES:
            found[(scope, name)] = value.strip().strip("'\"")
    args: list[str] = []
    for name, flag in OPTIONS.items():
        value = next((found[(s, name)] for s in SCOPES if (s, name) in found), None)
        for item in (value or "").split():
            args += [flag, item]
    no_index = next((found[(s, "no-index")] for s in SCOPES if (s, "no-index") in found), "")
    if no_index.lower() in ("1", "true", "yes", "on"):
        args.append("--no-index")
    return args


def main(argv: list[str]) -> int:
    python, requirements = argv[0], argv[1:] or ["-e", ".[dev]"]
    uv = Path(python).parent / "uv"
    cmd = [str(uv), "pip", "install", "--python", python, "--index-strategy",
           "unsafe-best-match", "--compile-bytecode", "--quiet", *pip_sources(python),
           *requirements]
    if uv.exists() and subprocess.run(cmd).returncode == 0:
        return 0
    print(f"uv failed or missing ({shlex.join(cmd)}); installing with pip", file=sys.stderr)
    return subprocess.run([python, "-m", "pip", "install", "--quiet",
                           "--disable-pip-version-check", *requirements]).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
