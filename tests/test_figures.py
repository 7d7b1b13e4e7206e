"""Figures at reading size: what a reader of the book would notice on a page about 700 px wide.

Every image panel has a colour bar with a unit, galleries a scale bar in au and the N and E arrows
(once), images keep the sky convention (north up, east left), and corner plots' labels stay legible
when the figure is shrunk to page width.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from match_helpers import write_bank

from protolib.bank import Bank
from protolib.distributions import match_parameters, prior_parameters, truth_parameters
from protolib.instrument import Beam
from protolib.matching import Matches
from protolib.plots import style
from protolib.plots.bank import plot_parameter_gallery, plot_prior_corner
from protolib.plots.corner import plot_corner
from protolib.plots.gallery import plot_gallery
from protolib.plots.images import plot_instrument_effects

MIN_POINTS_AT_PAGE_WIDTH = 7.5  # the smallest text a reader should meet, as shown on the page


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    with Bank(write_bank(tmp_path_factory.mktemp("figures") / "bank.h5", n_systems=40)) as b:
        yield b


def _colorbar_labels(fig) -> list[str]:
    """The labels of every colour bar: child axes of the panels (galleries) or axes of their own."""
    bars = [child for ax in fig.axes for child in ax.child_axes] + [ax for ax in fig.axes if hasattr(ax, "_colorbar")]
    return [bar.get_ylabel() or bar.get_xlabel() for bar in bars]


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def _points_at_page_width(fig, size: float) -> float:
    return size * min(1.0, style.PAGE_WIDTH_IN / fig.get_figwidth())


def test_a_gallery_has_a_colour_bar_with_its_unit_a_scale_bar_in_au_and_the_orientation_once(bank):
    images = bank.load_images(list(range(12)))[:, 0]
    fig = plot_gallery(
        images[0],
        images[1:],
        np.linspace(0.99, 0.9, 11),
        pixel_size_au=bank.pixel_size_au,
        captions=[f"system {s}, i = 45 deg" for s in range(1, 12)],
    )
    labels = _colorbar_labels(fig)
    # one per image, each image on its own scale
    assert len(labels) == 12 and all(label == "mJy/beam" for label in labels)
    assert sum(text.endswith(" au") for text in _texts(fig)) == 1
    assert _texts(fig).count("N") == 1 and _texts(fig).count("E") == 1
    target = fig.axes[0]
    # east (positive offset) to the left
    assert target.images[0].origin == "lower" and target.images[0].get_extent()[0] > 0
    shared = plot_gallery(images[0], images[1:4], np.ones(3), scale="target", unit="Jy/pixel")
    assert _colorbar_labels(shared) == ["mJy/pixel (all panels)"]
    assert len({ax.images[0].norm.vmax for ax in shared.axes}) == 1
    plt.close("all")


def test_the_target_panel_draws_its_beam_whole_inside_it_with_and_without_residuals():
    from matplotlib.patches import Ellipse

    rng = np.random.default_rng(5)
    images = rng.standard_normal((4, 32, 32))
    for residuals in (None, rng.standard_normal((3, 32, 32))):
        fig = plot_gallery(
            images[0], images[1:], np.ones(3), residuals=residuals, pixel_size_au=10.0, beam_au=(60.0, 40.0, 30.0)
        )
        target = fig.axes[0]
        beams = [p for p in target.patches if isinstance(p, Ellipse)]
        assert len(beams) == 1 and beams[0].height == 60.0 and beams[0].width == 40.0
        fig.canvas.draw()
        panel, beam = target.get_window_extent(), beams[0].get_window_extent()
        assert panel.x0 <= beam.x0 and beam.x1 <= panel.x1 and panel.y0 <= beam.y0 and beam.y1 <= panel.y1
        assert not [p for ax in fig.axes[1:] for p in ax.patches if isinstance(p, Ellipse)]  # the target's only
    plt.close("all")


def test_the_band_gallery_draws_each_bands_own_beam_in_its_target_panel():
    from matplotlib.patches import Ellipse

    from protolib.plots.gallery import plot_band_gallery

    rng = np.random.default_rng(6)
    fig = plot_band_gallery(
        rng.standard_normal((2, 32, 32)),
        rng.standard_normal((3, 2, 32, 32)),
        np.ones(3),
        band_names=["100 GHz", "230 GHz"],
        residuals=rng.standard_normal((3, 2, 32, 32)),
        reduced_chi2=np.ones(3),
        reduced_chi2_by_band=np.ones((2, 3)),
        pixel_size_au=10.0,
        beam_au=[(90.0, 70.0, 10.0), (50.0, 30.0, 20.0)],
    )
    beams = [(ax, p) for ax in fig.axes for p in ax.patches if isinstance(p, Ellipse)]
    assert [(b.height, b.width) for _, b in beams] == [(90.0, 70.0), (50.0, 30.0)]  # the low band's first
    assert beams[0][0] is not beams[1][0]  # each in its own band's target panel
    fig.canvas.draw()
    for ax, beam in beams:
        panel, ellipse = ax.get_window_extent(), beam.get_window_extent()
        assert panel.x0 <= ellipse.x0 and ellipse.x1 <= panel.x1 and panel.y0 <= ellipse.y0 and ellipse.y1 <= panel.y1
    plt.close("all")


def test_a_small_source_in_a_wide_field_is_shown_cropped_with_its_field_said_and_a_filled_field_is_not():
    rng = np.random.default_rng(3)
    rows, columns = np.indices((128, 128)) - 63.5
    source = np.exp(-0.5 * (rows**2 + columns**2) / 2.0**2)
    noisy = source + 0.02 * rng.standard_normal((4, 128, 128))
    residuals = rng.standard_normal((3, 128, 128))
    fig = plot_gallery(
        noisy[0], noisy[1:], np.ones(3), residuals=residuals, pixel_size_au=40.0, crop_to_source=True, n_columns=4
    )
    target = fig.axes[0]
    side = target.images[0].get_array().shape[-1]
    assert side < 64  # a few times the source's size, not the 128-pixel field
    assert f"central {side * 40:,.0f} au of 5,120 au" in " ".join(target.get_title().split())
    assert all(ax.images[0].get_array().shape[-1] == side for ax in fig.axes if ax.images)
    wide = np.exp(-0.5 * (rows**2 + columns**2) / 30.0**2) + 0.02 * rng.standard_normal((4, 128, 128))
    fig = plot_gallery(wide[0], wide[1:], np.ones(3), pixel_size_au=40.0, crop_to_source=True)
    assert fig.axes[0].images[0].get_array().shape[-1] == 128 and "central" not in fig.axes[0].get_title()
    plt.close("all")


def test_gallery_titles_stay_within_their_panels_at_page_width(bank):
    images = bank.load_images(list(range(12)))[:, 0]
    fig = plot_gallery(
        images[0], images[1:], np.linspace(0.99, 0.9, 11), captions=[f"system {s}, i = 45 deg" for s in range(1, 12)]
    )
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        assert _points_at_page_width(fig, ax.title.get_fontsize()) >= MIN_POINTS_AT_PAGE_WIDTH
        panel, title = ax.get_window_extent(renderer), ax.title.get_window_extent(renderer)
        assert title.width <= 1.25 * panel.width, ax.get_title()
    plt.close(fig)


def test_the_bank_figures_have_colour_bars_in_their_units_and_a_scale_bar(bank):
    fig = plot_parameter_gallery(bank, "disk_radius", n_systems=3, n_projections=3)
    assert _colorbar_labels(fig) == ["mJy/beam"] * 3  # one shared scale per row
    assert "50 au" in _texts(fig) and {"N", "E"} <= set(_texts(fig))
    images = bank.load_images([0])[0][:2]
    fig = plot_instrument_effects(
        images, images, images, pixel_size_au=bank.pixel_size_au, beam=Beam(0.25, 0.2, 30.0), distance_pc=140.0
    )
    assert sorted(_colorbar_labels(fig)) == ["mJy/beam"] * 4 + ["mJy/pixel"] * 2
    plt.close("all")


def test_the_parameter_gallery_draws_the_banks_beam_in_each_rows_first_panel(bank):
    from matplotlib.patches import Ellipse

    fig = plot_parameter_gallery(bank, "disk_radius", n_systems=2, n_projections=3)
    beam, distance = bank.instrument.beam, bank.instrument.distance_pc
    panels = np.array(fig.axes).reshape(2, 3)
    for row in panels:
        [ellipse] = [p for p in row[0].patches if isinstance(p, Ellipse)]
        assert (ellipse.height, ellipse.width) == pytest.approx(
            (beam.major_arcsec * distance, beam.minor_arcsec * distance)
        )
        assert not [p for ax in row[1:] for p in ax.patches if isinstance(p, Ellipse)]
    plt.close("all")


def test_the_beam_is_drawn_with_its_position_angle_east_of_north(bank):
    fig, ax = plt.subplots()
    style.draw_image(ax, bank.images[0, 0], pixel_size_au=10.0, beam=Beam(0.5, 0.1, 30.0), distance_pc=140.0)
    [beam] = ax.patches
    # the major axis' northern end, in (east, north) au
    tip = beam.get_patch_transform().transform([(0.0, 0.5)])[0] - beam.center
    assert np.degrees(np.arctan2(tip[0], tip[1])) == pytest.approx(30.0)
    plt.close(fig)


def _bottom_row_label_boxes(fig, n: int):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = np.array(fig.axes[: n * n]).reshape(n, n)
    return [ax.xaxis.label.get_window_extent(renderer) for ax in axes[-1]], axes


@pytest.mark.parametrize("n_parameters", [4, 8])
def test_corner_labels_are_legible_at_page_width_and_do_not_overlap(bank, n_parameters):
    names = [
        "stellar_mass",
        "accretion_rate",
        "disk_radius",
        "disk_mass",
        "envelope_mass",
        "luminosity",
        "age",
        "inclination",
    ]
    names = names[:n_parameters]
    matches = Matches(np.linspace(0.99, 0.9, 80), np.arange(80) % 40, np.arange(80) % 4)
    fig = plot_corner(
        match_parameters(bank, matches),
        prior_parameters(bank),
        parameters=names,
        truths=truth_parameters(bank, 5, 1),
        parameter_info=bank.parameter_info,
    )
    assert fig.get_figwidth() <= 1.3 * style.PAGE_WIDTH_IN  # about page width, whatever the number of parameters
    boxes, axes = _bottom_row_label_boxes(fig, n_parameters)
    for ax in axes.ravel():
        if ax.get_xlabel():
            assert _points_at_page_width(fig, ax.xaxis.label.get_fontsize()) >= 8.5
        for tick in ax.get_xticklabels() + ax.get_yticklabels():
            assert _points_at_page_width(fig, tick.get_fontsize()) >= MIN_POINTS_AT_PAGE_WIDTH
        assert len([t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]) <= 3  # few ticks
    assert not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:])), "neighbouring axis labels overlap"
    renderer = fig.canvas.get_renderer()
    for panels, labels in ((axes[-1], lambda ax: ax.get_xticklabels()), (axes[:, 0], lambda ax: ax.get_yticklabels())):
        ticks = [
            [t.get_window_extent(renderer) for t in labels(ax) if t.get_visible() and t.get_text()] for ax in panels
        ]
        assert not any(a.overlaps(b) for one, two in zip(ticks, ticks[1:]) for a in one for b in two), (
            "tick labels run together"
        )
    figure_box = fig.bbox
    assert all(figure_box.x0 <= box.x0 and box.y0 >= figure_box.y0 for box in boxes)  # inside the figure
    plt.close(fig)


def test_the_prior_corner_is_page_sized_with_legible_labels(bank):
    fig = plot_prior_corner(bank)
    n = int(round(np.sqrt(len(fig.axes))))
    assert n >= 7 and fig.get_figwidth() <= 1.3 * style.PAGE_WIDTH_IN
    boxes, axes = _bottom_row_label_boxes(fig, n)
    assert all(_points_at_page_width(fig, ax.xaxis.label.get_fontsize()) >= 8.5 for ax in axes[-1])
    assert not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:]))
    plt.close(fig)


def test_fonts_grow_with_figures_wider_than_the_page():
    assert style.page_fontsize(5.0, 9) == 9
    assert style.page_fontsize(14.0, 9) == pytest.approx(18)
    assert style.display_unit("Jy/beam") == (1e3, "mJy/beam")
    assert "network input" in style.display_unit("stretched")[1]
    assert style.fit_title("system 12, i = 45 deg", 1.0, 9) == "system 12\ni = 45 deg"


def test_the_coverage_legend_covers_no_curve():
    from types import SimpleNamespace

    from protolib.evaluation import CURVE_LEVELS
    from protolib.plots.evaluation import plot_coverage

    names = [f"parameter {i}" for i in range(11)]
    evaluation = SimpleNamespace(
        parameters=names, top_k=20, coverage_curve={n: np.asarray(CURVE_LEVELS) for n in names}
    )
    results = {
        method: SimpleNamespace(figures=lambda corrected: evaluation)
        for method in ("random", "pixel", "pca", "autoencoder", "siamese")
    }
    fig = plot_coverage(results)
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent(fig.canvas.get_renderer())
    assert not any(legend.overlaps(ax.get_window_extent()) for ax in fig.axes if ax.get_visible())
    plt.close(fig)


def test_a_learning_curve_that_rises_gets_no_extrapolation_and_its_panel_says_so():
    """A falling power law fitted to a rising error sits at c = 0: a flat line below the last point, not a forecast."""
    from protolib.evaluation.book import rising_learning_curves
    from protolib.plots.evaluation import plot_learning_curves

    def row(error):
        return {
            "mean_target_rms_error_over_prior_spread": error,
            "parameters": {"disk_mass": {"rms_error_over_prior_spread": error}},
        }

    falling, rising = (0.8, 0.7, 0.65), (0.6, 0.63, 0.7)
    flat = {"a": 0.64, "b": 0.0, "c": 0.0, "parameters_at_bounds": ["c"], "extrapolation": {"value": 0.64}}
    fit = {"a": 0.5, "b": 2.0, "c": 0.5, "extrapolation": {"value": 0.52}}
    curves = {
        "train_systems": [210, 700, 2100],
        "target_parameters": ["disk_mass"],
        "methods": {
            "siamese": {"sizes": {str(n): row(e) for n, e in zip((210, 700, 2100), falling)}},
            "pixel": {"sizes": {str(n): row(e) for n, e in zip((210, 700, 2100), rising)}},
        },
        "fits": {"by_method": {"siamese": {"disk_mass": fit}, "pixel": {"disk_mass": flat}}},
        "extrapolation": {"train_systems": 14000},
    }
    assert rising_learning_curves(curves) == [("pixel", "disk_mass")]
    panel = plot_learning_curves(curves, columns=2).axes[0]
    dashed = [line for line in panel.lines if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_color() == "tab:blue"  # the Siamese network's only
    assert any("pixel: error rises" in text.get_text() for text in panel.texts)
    plt.close("all")


def test_the_network_sketches_and_loss_curves_read_at_page_width():
    """Chapters 02 and 03 sketch their networks and draw their loss curves wider than the page."""
    from protolib.plots.learning import plot_autoencoder_sketch, plot_history, plot_siamese_sketch

    history = [{"epoch": e, "train_loss": 1.0 / e, "validation_loss": 1.2 / e} for e in range(1, 6)]
    for fig in (
        plot_autoencoder_sketch(64, [8, 16, 32], 32),
        plot_siamese_sketch(64, [8, 16, 32], 32, 128, 32),
        plot_history({"autoencoder": history}),
    ):
        sizes = [t.get_fontsize() for ax in fig.axes for t in ax.texts if t.get_text()]  # arrows are empty texts
        sizes += [t.get_fontsize() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        assert sizes
        assert min(_points_at_page_width(fig, size) for size in sizes) >= MIN_POINTS_AT_PAGE_WIDTH - 1e-9
        plt.close(fig)
