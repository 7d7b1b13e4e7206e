"""Notebooks 02 and 03 run top to bottom, alone, in a fresh kernel on the tiny configuration."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.notebooks
@pytest.mark.parametrize("name", ["02_autoencoder.ipynb", "03_siamese_wsml.ipynb"])
def test_learning_notebook_runs_alone_on_the_tiny_configuration(name, tmp_path, monkeypatch):
    monkeypatch.setenv("PROTOLIB_CONFIG", "tiny")
    monkeypatch.setenv("PROTOLIB_ARTIFACTS", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(NOTEBOOKS.parent))
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "commit notebooks without outputs"
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    figures = sum("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))
    assert figures >= 3
