"""Real observations shipped with protolib, and the published values to judge a result on them against.

``data/observations/`` (beside the package, in a checkout) holds three NOEMA 1.4 mm continuum maps of
Perseus protostars from the PRODIGE programme (MIT licence, provenance in its README) and
``literature.yaml``: published distances, masses, sizes and orientations per source, each with a
low-high range, a reference and how certain it is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from .distributions import ParameterSummary
from .runtime import ProtolibInputError

__all__ = ["OBSERVATIONS_DIR", "LiteratureSource", "load_literature", "compare_with_literature"]

OBSERVATIONS_DIR = Path(__file__).resolve().parent.parent / "data" / "observations"
"""The shipped maps and ``literature.yaml`` (present in a source checkout, not in a wheel)."""


@dataclass
class LiteratureSource:
    """One source's entry in ``literature.yaml``.

    Attributes:
        name: the entry's name (e.g. ``"L1448-IRS3B"``).
        path: the FITS map holding it.
        distance_pc: the adopted distance.
        position: ``"RA DEC"`` of the source, to centre on (``None``: the emission peak).
        values: quantity -> dict with ``value``, ``low``, ``high``, ``unit``, ``reference``,
            ``certainty`` and ``note``.
        references: reference key -> full citation.
        not_found: quantities searched for and not found.
    """

    name: str
    path: Path
    distance_pc: float
    position: str | None
    values: dict
    references: dict
    not_found: list
    source_class: str = ""

    @property
    def distance_error_pc(self) -> float:
        """The distance's 1-sigma error [pc]: a quarter of its published low-high range, read as a 95% range
        (0 when no range is given)."""
        distance = self.values["distance_pc"]
        return 0.25 * (float(distance.get("high", distance["value"])) - float(distance.get("low", distance["value"])))


def load_literature(path: str | Path | None = None) -> dict[str, LiteratureSource]:
    """The sources of ``literature.yaml`` (default: the shipped one), by name.

    Raises:
        ProtolibInputError: the file is missing, not YAML, or an entry lacks its map or distance.
    """
    path = Path(path) if path is not None else OBSERVATIONS_DIR / "literature.yaml"
    if not path.is_file():
        raise ProtolibInputError(
            f"{path}: no literature table here (it ships in data/observations/ of a protolib checkout)."
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ProtolibInputError(f"{path}: not a readable YAML file ({error}).") from None
    references = data.get("references", {})
    sources = {}
    for name, entry in (data.get("sources") or {}).items():
        values = entry.get("values") or {}
        if "file" not in entry or "distance_pc" not in values:
            raise ProtolibInputError(f"{path}: source {name!r} needs a 'file' and a distance_pc value.")
        position = f"{entry['ra']} {entry['dec']}" if entry.get("ra") and entry.get("dec") else None
        sources[name] = LiteratureSource(
            name,
            path.parent / entry["file"],
            float(values["distance_pc"]["value"]),
            position,
            values,
            references,
            list(entry.get("not_found") or []),
            str(entry.get("class", "")),
        )
    return sources


def compare_with_literature(
    summaries: Sequence[ParameterSummary], source: LiteratureSource, prior: Mapping[str, np.ndarray] | None = None
) -> list[dict]:
    """Each published value beside the matches' 95% interval for the same parameter.

    Only quantities the bank has a parameter for are compared. ``inside`` says whether the published
    value lies inside the 95% interval, ``overlaps`` whether its published range overlaps it, and
    ``informative`` whether the interval is narrower than the prior's (68% width ratio under 0.9): a
    value inside an interval as wide as the prior says nothing for the method. With ``prior`` (the
    bank's parameter values), ``in_prior`` says whether the published value lies within the bank's range
    at all: outside it no match can reach it.

    Returns:
        One row per compared quantity: ``parameter``, ``unit``, ``literature``, ``low``, ``high``,
        ``certainty``, ``reference``, ``p2_5``, ``median``, ``p97_5``, ``inside``, ``overlaps``,
        ``informative``, ``in_prior``.
    """
    by_name = {s.parameter: s for s in summaries}
    rows = []
    for quantity, value in source.values.items():
        summary = by_name.get(quantity)
        if summary is None:
            continue
        best, low, high = (
            float(value["value"]),
            float(value.get("low", value["value"])),
            float(value.get("high", value["value"])),
        )
        rows.append(
            {
                "parameter": quantity,
                "unit": value.get("unit", summary.unit),
                "literature": best,
                "low": low,
                "high": high,
                "certainty": value.get("certainty", ""),
                "reference": value.get("reference", ""),
                "p2_5": summary.p2_5,
                "median": summary.median,
                "p97_5": summary.p97_5,
                "inside": bool(summary.p2_5 <= best <= summary.p97_5),
                "overlaps": bool(low <= summary.p97_5 and high >= summary.p2_5),
                "factor_from_median": float(best / summary.median)
                if summary.log_scale and summary.median > 0
                else math.nan,
                "informative": bool(summary.prior_width_ratio < 0.9),
                "in_prior": None
                if prior is None or quantity not in prior
                else bool(np.min(prior[quantity]) <= best <= np.max(prior[quantity])),
            }
        )
    return rows
