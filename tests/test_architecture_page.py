"""``book/architecture.md`` tells the truth: its layers are the ones the import test checks, and every
module and name it points a reader to exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from test_architecture import LAYERS

PAGE = Path(__file__).resolve().parent.parent / "book" / "architecture.md"


def _layer_rows() -> list[set[str]]:
    """The module names of each row of the page's layers table, lowest first."""
    text = PAGE.read_text()
    table = text[text.index("## The layers") :]
    rows = [line for line in table.splitlines() if re.match(r"\| \d+\. ", line)]
    names = []
    for row in rows:
        cell = row.split("|")[2]
        package = re.match(r"\s*`(\w+)/`:", cell)  # "`pipelines/`: `simulate`, ...": the package and its modules
        in_cell = {name.rstrip("/") for name in re.findall(r"`([\w./]+)`", cell)}
        names.append({package.group(1)} if package else in_cell)
    return names


def test_the_page_lists_the_layers_the_import_test_checks():
    rows = _layer_rows()
    assert len(rows) == len(LAYERS), f"the page has {len(rows)} layers, tests/test_architecture.py {len(LAYERS)}"
    for level, (on_page, checked) in enumerate(zip(rows, LAYERS, strict=True), 1):
        checked = {name for name in checked if name != "__main__"}
        assert on_page == checked, (
            f"layer {level}: the page names {sorted(on_page - checked)} that the test does not put there, and the "
            f"test puts {sorted(checked - on_page)} there that the page does not name"
        )


def _dotted_names() -> set[str]:
    """Every ``module.name`` in backticks on the page that starts with a protolib module."""
    found = set()
    for name in re.findall(r"`([a-z_]+(?:[./][A-Za-z_]+)+)`", PAGE.read_text()):
        if name.endswith(".py"):  # a file: checked as a module below when it is one
            name = name[: -len(".py")]
            if name == "__init__":
                continue
        name = name.replace("/", ".")
        try:
            importlib.import_module(f"protolib.{name.split('.')[0]}")
        except ModuleNotFoundError:
            continue
        found.add(name)
    return found


def _resolves(dotted: str) -> bool:
    """Whether ``dotted`` is a protolib module, a name in one, or a configuration key (``matching.search``)."""
    from protolib.config import SECTION_TYPES, setting_help

    if dotted.startswith("config.") and dotted.split(".", 1)[1] in SECTION_TYPES:  # a loaded configuration's section
        return True
    if dotted.split(".")[0] in SECTION_TYPES:
        try:
            if setting_help(dotted):
                return True
        except (KeyError, TypeError):  # a module path such as matching.calibration, not a key
            pass
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module("protolib." + ".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


def test_every_name_the_page_points_to_exists():
    names = _dotted_names()
    missing = sorted(name for name in names if not _resolves(name))
    assert len(names) > 30 and not missing, f"book/architecture.md names what protolib does not have: {missing}"
