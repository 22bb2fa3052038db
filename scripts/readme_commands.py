"""Run the commands of a README section exactly as written: the first ```bash block after ``heading``, one command
per non-comment line, each in bash from the repository root (or ``--cwd``); stops at the first that fails.

    python scripts/readme_commands.py "### MAE training step"          # what .ci/run does after the tests
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import fire

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands(heading: str, readme: str = "README.md") -> list[str]:
    """The command lines of the first ```bash block after the first line starting with ``heading`` in ``readme``
    (a path relative to the repository)."""
    text = open(os.path.join(REPO, readme)).read()
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith(heading)), None)
    if start is None:
        raise ValueError(f"{readme} has no line starting with {heading!r}")
    section = "\n".join(lines[start:])
    m = re.search(r"```bash\n(.*?)```", section, re.S)
    if not m:
        raise ValueError(f"{readme}: no ```bash block after {heading!r}")
    return [ln for ln in m.group(1).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def main(heading: str, readme: str = "README.md", cwd: str = REPO) -> None:
    for cmd in readme_commands(heading, readme):
        print(f"$ {cmd}", flush=True)
        r = subprocess.run(["bash", "-c", cmd], cwd=cwd)
        if r.returncode:
            sys.exit(f"README command failed (exit {r.returncode}): {cmd}")


if __name__ == "__main__":
    fire.Fire(main)
