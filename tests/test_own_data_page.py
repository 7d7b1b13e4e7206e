"""The numbers typed on the "Using it on your own data" page are the code's.

``book/own_data.md`` is a static page, not a notebook, so it cannot glue its numbers; a reader acts on
them (which flux error is assumed, which frequency is refused, when a match fails), so each is checked
here against the constant the code uses.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from protolib.config import load_config
from protolib.goodness_of_fit import EXCESS_LIMIT, STRUCTURE_FRACTION, STRUCTURE_SIGMA
from protolib.matching.observing import FLUX_CALIBRATION_BANDS, MAX_SCALE_RANGE_BEAMS
from protolib.observation.prepare import MAX_FREQUENCY_RATIO
from protolib.parameters import NUISANCE_PARAMETERS
from protolib.simulator import SimulatorConfig

PAGE = (Path(__file__).resolve().parent.parent / "book" / "own_data.md").read_text()
WORDS = {10: "ten"}
(LOW, LOW_ERROR), (MIDDLE, MIDDLE_ERROR), (_, HIGH_ERROR) = FLUX_CALIBRATION_BANDS
FLUX_PHRASE = (
    f"({100 * LOW_ERROR:g}% below {LOW:g} GHz, {100 * MIDDLE_ERROR:g}% to {MIDDLE:g} GHz, {100 * HIGH_ERROR:g}% above)"
)


def said(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize(
    "phrase",
    [
        FLUX_PHRASE,
        f"more than a factor {MAX_FREQUENCY_RATIO:g} away",
        f"drawn over {MAX_SCALE_RANGE_BEAMS[0]:g}-{MAX_SCALE_RANGE_BEAMS[1]:g} beam major axes",
        f"may not pass {100 * EXCESS_LIMIT:g}% of the signal",
        f"structure of {STRUCTURE_SIGMA:g} times the noise and {100 * STRUCTURE_FRACTION:g}% of your map's peak",
        f"(`simulator.opacity_beta`, {SimulatorConfig().opacity_beta:g})",
        f"and {WORDS.get(len(NUISANCE_PARAMETERS), len(NUISANCE_PARAMETERS))} nuisance parameters besides",
        f"(`matching.limit_percentile`, {load_config('default').matching.limit_percentile:g}% by default)",
    ],
)
def test_the_page_says_what_the_code_does(phrase):
    assert said(phrase) in said(PAGE), f"book/own_data.md no longer says {phrase!r}: update it to the code's value"
