"""The examples and docs run: the notebook script executes top to bottom."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import antavo_braze as ab

ROOT = Path(__file__).parents[1]


def test_notebook_runs(tmp_path: Path) -> None:
    """examples/notebook.py executes against FakeBraze and prints its report."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "notebook.py")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "201 records: 200 succeeded, 1 failed, 0 skipped" in result.stdout


def test_every_public_name_is_in_the_reference() -> None:
    """docs/reference.md documents every name in __all__."""
    text = (ROOT / "docs" / "reference.md").read_text()
    documented = set(re.findall(r"::: antavo_braze\.(\w+)", text))
    assert set(ab.__all__) - {"__version__"} <= documented
    assert "__version__" in text
