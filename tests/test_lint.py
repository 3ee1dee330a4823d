"""The code passes the project's lint rules (pyproject.toml, [tool.ruff.lint])."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT


def test_the_tree_passes_ruff() -> None:
    found = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert found.returncode == 0, found.stdout + found.stderr
