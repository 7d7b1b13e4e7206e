"""The explorer in a real kernel: its widgets are built, and the chosen target's verdict is shown, a warning when out
of distribution."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent

SETUP = """
import os, sys
sys.path.insert(0, {tests!r})
os.environ["PROTOLIB_INTERACTIVE"] = "1"
from pathlib import Path
import numpy as np
from match_helpers import ProjectionEmbedder, write_bank
from protolib.bank import Bank
from protolib.matching import Matcher
from protolib.explorer import bank_target, image_target, match_explorer
bank = Bank(write_bank(Path({bank!r}), n_systems=30))
matcher = Matcher.from_embed_function(ProjectionEmbedder(), bank, progress=False)
noise = np.random.default_rng(0).normal(size=(16, 16))
targets = [bank_target(matcher, 2, k_max=40), image_target(matcher, noise, "pure noise", k_max=40)]
explorer = match_explorer(bank, targets, parameters=["stellar_mass", "disk_radius"], k=20)
"""

PROBE = """
import json
def walk(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from walk(child)
verdict = next(w for w in walk(explorer) if type(w).__name__ == "HTML")
first = verdict.value
explorer.children[0].children[0].children[0].value = 1  # choose the pure-noise target
print(json.dumps({"kinds": [type(w).__name__ for w in walk(explorer)], "first": first, "second": verdict.value,
                  "gallery_outputs": len(explorer.children[2].outputs)}))
"""


def test_the_explorer_builds_its_widgets_in_a_kernel_and_shows_the_verdict(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipywidgets")
    monkeypatch.setenv("PYTHONPATH", str(TESTS.parent))
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(SETUP.format(tests=str(TESTS), bank=str(tmp_path / "bank.h5"))),
            nbformat.v4.new_code_cell(PROBE),
        ]
    )
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    shown = [o for o in notebook.cells[0].outputs if o.get("output_type") == "display_data"]
    assert any("application/vnd.jupyter.widget-view+json" in o["data"] for o in shown), (
        "the explorer displayed no widget"
    )
    [probe] = [json.loads(o["text"]) for o in notebook.cells[1].outputs if o.get("output_type") == "stream"]
    assert {"Dropdown", "IntSlider", "SelectMultiple", "HTML", "Output"} <= set(probe["kinds"])
    assert "bank system 2" in probe["first"] and "distribution" in probe["first"]
    assert "pure noise" in probe["second"] and "WARNING: out of distribution" in probe["second"]
    assert "describe the bank, not this target" in probe["second"]
    assert probe["gallery_outputs"] >= 1  # the gallery was drawn into its output area


def test_the_static_view_states_the_verdict_and_shows_an_observation_through_its_transform(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from IPython.display import Markdown
    from match_helpers import ProjectionEmbedder, write_bank

    from protolib import explorer
    from protolib.bank import Bank
    from protolib.explorer import image_target, match_explorer
    from protolib.matching import Matcher

    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, *a, **k: shown.append(obj))
    seen = []

    from protolib.instrument import Beam

    class Transform:  # stands in for an observation's beam and noise
        resolution = type("Resolution", (), {"target_beam": Beam(0.4, 0.3, 25.0)})()

        def __call__(self, images):
            seen.append(len(images))
            return np.asarray(images) * 2.0

    transform = Transform()

    with Bank(write_bank(tmp_path / "bank.h5", n_systems=30)) as bank:
        matcher = Matcher.from_embed_function(ProjectionEmbedder(), bank, transform=transform, progress=False)
        seen.clear()
        noise = np.random.default_rng(0).normal(size=(16, 16))
        target = image_target(matcher, noise, "pure noise", k_max=40)
        assert target.transform is transform and target.check.is_out_of_distribution
        gallery, corner = match_explorer(
            bank, [target], parameters=["stellar_mass", "disk_radius"], k=20, n_gallery=4, interactive=False
        )
        assert seen == [4]  # the gallery's matches went through the target's transform
        expected = 2.0 * bank.images[target.matches.system[0], target.matches.projection[0]]
        np.testing.assert_allclose(gallery.axes[1].images[0].get_array(), 1e3 * expected, rtol=1e-5)  # in mJy/beam
        # the target's panel draws the beam it is seen at: the observation's, in au at the bank's distance
        [beam] = [p for p in gallery.axes[0].patches if isinstance(p, matplotlib.patches.Ellipse)]
        distance = bank.instrument.distance_pc
        assert (beam.height, beam.width) == pytest.approx((0.4 * distance, 0.3 * distance))
    [note] = [o for o in shown if isinstance(o, Markdown)]
    assert "**pure noise: WARNING: out of distribution" in note.data
    assert "OUT OF DISTRIBUTION" in gallery._suptitle.get_text()
    assert explorer.verdict_line(target)[0] is True
    plt.close("all")
