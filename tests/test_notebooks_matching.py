"""Notebooks 04 and 05 run top to bottom, alone, in a fresh kernel on the tiny configuration."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.notebooks
@pytest.mark.parametrize("name, min_figures", [("04_matching.ipynb", 3), ("05_distributions.ipynb", 4)])
def test_matching_notebook_runs_alone_on_the_tiny_configuration(name, min_figures, tmp_path, monkeypatch):
    monkeypatch.setenv("PROTOLIB_CONFIG", "tiny")
    monkeypatch.setenv("PROTOLIB_ARTIFACTS", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(NOTEBOOKS.parent))
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.delenv("PROTOLIB_INTERACTIVE", raising=False)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "commit notebooks without outputs"
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    assert sum("image/png" in output.get("data", {}) for output in outputs) >= min_figures
    if name.startswith("05"):  # the explorer's static view, not an empty widget, where no front end is attached
        assert any("Static view of the explorer" in output.get("data", {}).get("text/markdown", "") for output in outputs)
