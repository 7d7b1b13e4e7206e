"""Every chapter notebook runs alone, top to bottom, in a fresh kernel on the tiny configuration.

Each notebook gets an empty artifacts folder, so it must build (or train) whatever earlier chapters
would have left behind, through the same protolib calls, as a reader's fresh checkout would.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_prose_numbers import glued_names

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
MIN_FIGURES = {
    "01_data_preparation": 5,
    "01b_observations": 1,
    "02_autoencoder": 3,
    "03_siamese_wsml": 3,
    "04_matching": 3,
    "05_distributions": 4,
    "06_evaluation": 3,
    "06b_domain_shift": 3,
    "07_understanding": 3,
}


def test_every_notebook_is_in_the_book():
    toc = (NOTEBOOK_DIR.parent / "_toc.yml").read_text()
    missing = [p.stem for p in NOTEBOOKS if f"notebooks/{p.stem}" not in toc]
    assert NOTEBOOKS and not missing, f"notebooks missing from _toc.yml: {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    cells = json.loads(path.read_text())["cells"]
    with_outputs = [i for i, c in enumerate(cells) if c.get("outputs") or c.get("execution_count")]
    assert not with_outputs, f"{path.name}: cells {with_outputs} have outputs; clear them before committing"


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_alone_on_the_tiny_configuration(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("PROTOLIB_CONFIG", "tiny")
    monkeypatch.setenv("PROTOLIB_ARTIFACTS", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(NOTEBOOK_DIR.parent))
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.delenv("PROTOLIB_INTERACTIVE", raising=False)
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    )
    client.execute()  # raises CellExecutionError, with the failing cell and traceback, on any error
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    emitted = {o.get("metadata", {}).get("scrapbook", {}).get("name") for o in outputs}
    missing = sorted(glued_names(path) - emitted)
    assert not missing, f"{path.name}: its text takes {missing} from glue, but no cell glues them"
    figures = sum("image/png" in o.get("data", {}) for o in outputs)
    assert figures >= MIN_FIGURES.get(path.stem, 1), f"{path.name} drew {figures} figures"
    if path.stem == "05_distributions":  # the explorer's static view, not an empty widget, without a front end
        assert any("Static view of the explorer" in o.get("data", {}).get("text/markdown", "") for o in outputs)
