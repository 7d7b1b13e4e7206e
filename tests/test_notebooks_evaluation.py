"""Notebook 06 runs top to bottom, alone, in a fresh kernel on the tiny configuration."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "06_evaluation.ipynb"


@pytest.mark.notebooks
def test_evaluation_notebook_runs_alone_and_shows_its_tables_and_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("PROTOLIB_CONFIG", "tiny")
    monkeypatch.setenv("PROTOLIB_ARTIFACTS", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(NOTEBOOK.parent.parent))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "commit notebooks without outputs"
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    assert sum("image/png" in output.get("data", {}) for output in outputs) >= 5
    tables = [output["data"]["text/markdown"] for output in outputs if "text/markdown" in output.get("data", {})]
    assert any("| siamese |" in table for table in tables) and any("| cosine + mse |" in table for table in tables)
