"""The chapters' prose quotes no result that is not computed on its page.

A number a chapter's text quotes from a computation is glued from that computation (MyST-NB
``glue``), so it changes when the outputs do. This test reads every chapter's Markdown, leaves out
what is glued, in code, in maths or in a citation, and fails on any decimal number or percentage that
remains, unless it is a definition listed below (a 68% interval is a definition, not a result). That
the glued names are emitted by the chapter's code is checked where the chapters run
(``tests/test_notebooks.py``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

# Numbers the prose may type: definitions (interval levels, wavelengths, configuration choices it names),
# not results. Each entry is the token as written; a new typed result will not be in this list.
DEFINITIONS = {
    "*": {"68%", "95%", "50%", "0.68", "0.95", "16%", "84%", "2.5%", "97.5%", "1.3 mm", "1.4 mm"},
    # the synthetic observation's chosen pixel, beam and offset (set in the code below the text); GILDAS's blank value
    "01b_observations": {"0.05", "0.35", "0.28", "0.8", "0.5", "0.0"},
    "03_siamese_wsml": {"0.1"},  # the thesis's metric: the fraction of pairs within 0.1 of their target similarity
    "05b_real_protostars": {"0.0", "3.5"},  # GILDAS's blank value; the mask radius chosen for IRS3A
    # the verdicts' margin (0.05 of a prior spread), the band of a flat rank histogram, and the uniformity test's level
    "06_evaluation": {"0.05", "99%", "1%"},
    # a uniform prior's central 68% spans 0.68 sqrt(3) = 1.18 standard deviations either side (arithmetic, not a result)
    "06b_domain_shift": {"1.18", "1.2"},
}

NUMBER = re.compile(r"(?<![\w.\-])(\d+\.\d+(?:\s?(?:mm|%))?|\d+(?:\.\d+)?\s?%|\d+\s?mm)")
GLUE = re.compile(r"\{glue(?::[a-z]+)?\}`([^`:]+)(?::[^`]*)?`")


def prose(markdown: str) -> str:
    """``markdown`` without glue roles, other roles (citations), code, maths and link targets."""
    text = GLUE.sub(" ", markdown)
    text = re.sub(r"\{[a-z:]+\}`[^`]*`", " ", text)
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.S)
    text = re.sub(r"\$[^$]*\$", " ", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    return re.sub(r"https?://\S+", " ", text)


def markdown_cells(path: Path) -> list[str]:
    return [
        "".join(cell["source"]) for cell in json.loads(path.read_text())["cells"] if cell["cell_type"] == "markdown"
    ]


def glued_names(path: Path) -> set[str]:
    """The names a chapter's Markdown takes from ``glue``."""
    return {match.group(1).strip() for text in markdown_cells(path) for match in GLUE.finditer(text)}


def typed_numbers(path: Path) -> list[str]:
    allowed = DEFINITIONS["*"] | DEFINITIONS.get(path.stem, set())
    found = []
    for text in markdown_cells(path):
        for match in NUMBER.finditer(prose(text)):
            token = re.sub(r"\s+", " ", match.group(1))
            if token not in allowed and token.replace(" ", "") not in allowed:
                start = max(0, match.start() - 40)
                found.append(f"{token!r} in ...{prose(text)[start : match.end() + 20]!r}")
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_the_prose_types_no_result(path):
    typed = typed_numbers(path)
    assert not typed, (
        f"{path.name} types numbers that look like results; glue them from the computation "
        f"(or, for a definition, add it to DEFINITIONS): " + "; ".join(typed)
    )


def test_the_check_catches_a_typed_result():
    text = "The network reaches a Spearman of 0.72 and {glue:text}`spearman:.2f`; 95% intervals; $x = 0.5$; `0.3`."
    assert [m.group(1) for m in NUMBER.finditer(prose(text))] == ["0.72", "95%"]
    assert {m.group(1) for m in GLUE.finditer(text)} == {"spearman"}
