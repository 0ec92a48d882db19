"""The examples and docs run: the notebook executes top to bottom in a real kernel."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient

import antavo_braze as ab

ROOT = Path(__file__).parents[1]


def outputs(cell: Any) -> dict[str, str]:
    """A code cell's rich outputs by MIME type (text streams under 'stream')."""
    found: dict[str, str] = {}
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            found["stream"] = found.get("stream", "") + output["text"]
        elif output["output_type"] == "error":
            found["error"] = f"{output['ename']}: {output['evalue']}"
        else:
            found.update({kind: str(data) for kind, data in output["data"].items()})
    return found


def test_notebook_executes_with_html_report_and_inline_plot(tmp_path: Path) -> None:
    """examples/notebook.ipynb runs in a kernel: an HTML report, a failures table, a PNG."""
    notebook = nbformat.read(ROOT / "examples" / "notebook.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()
    cells = [outputs(cell) for cell in notebook.cells if cell.cell_type == "code"]
    assert not [c["error"] for c in cells if "error" in c]
    report = next(c["text/html"] for c in cells if "201 records" in c.get("text/html", ""))
    assert "200 succeeded, 1 failed" in report
    assert "<table" in report
    assert "member-broken" in report
    failures = [c["text/html"] for c in cells if "dataframe" in c.get("text/html", "")]
    assert any("member-broken" in table for table in failures)
    assert any("image/png" in c for c in cells)
    assert "Warning" not in "".join(c.get("stream", "") for c in cells)


def test_every_public_name_is_in_the_reference() -> None:
    """docs/reference.md documents every name in __all__."""
    text = (ROOT / "docs" / "reference.md").read_text()
    documented = set(re.findall(r"::: antavo_braze\.(\w+)", text))
    assert set(ab.__all__) - {"__version__"} <= documented
    assert "__version__" in text
