"""Matches: the best bank images of one target, and the physical parameters of matched bank images.

:class:`Matches` is what every search returns, best first. :func:`match_parameters` and
:func:`truth_parameters` read the parameters of matched and of target bank images;
:func:`describe_parameter` and :func:`scaled_for_summary` say how a parameter is summarised (in
log10 where it spans decades).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..bank import Bank
from ..normalise import scale_parameters
from ..parameters import PARAMETERS, VIEWING_PARAMETERS, Parameter
from ..runtime import ProtolibInputError

__all__ = ["Matches", "match_parameters", "truth_parameters", "describe_parameter", "scaled_for_summary"]


@dataclass
class Matches:
    """The best matches of one target, best first: by similarity as searched, or as the distribution takes them.

    Attributes:
        similarity: ``(n,)`` similarity of each match to the target, descending as searched (1 = identical).
        system: ``(n,)`` bank system index of each match.
        projection: ``(n,)`` projection index of each match within its system.
        excluded_system: the bank system that was not searched (the target's own), or ``None``.
    """

    similarity: np.ndarray
    system: np.ndarray
    projection: np.ndarray
    excluded_system: int | None = None

    def __len__(self) -> int:
        return len(self.similarity)

    @property
    def rank(self) -> np.ndarray:
        """``(n,)`` rank of each match, 1 for the best."""
        return np.arange(1, len(self) + 1)

    def head(self, k: int) -> Matches:
        """The ``k`` best matches."""
        return Matches(self.similarity[:k], self.system[:k], self.projection[:k], self.excluded_system)

    def take(self, order: np.ndarray) -> Matches:
        """The matches at ``order`` (indices into these), in that order: e.g. re-ranked by their image-space fit
        (:func:`~protolib.matching.fit.distribution_order`), when the similarity no longer descends."""
        order = np.asarray(order, dtype=np.int64)
        return Matches(self.similarity[order], self.system[order], self.projection[order], self.excluded_system)


def match_parameters(bank: Bank, matches: Matches, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The physical parameters of each match, in physical units, plus its viewing angles.

    Returns:
        A dict name -> ``(n_matches,)``: every bank parameter (or ``names``), ``inclination`` and
        ``position_angle`` [deg] of the matched projection.
    """
    names = list(bank.parameters) if names is None else list(names)
    table = {name: bank.parameters[name][matches.system] for name in names if name in bank.parameters}
    missing = [n for n in names if n not in bank.parameters and n not in VIEWING_PARAMETERS]
    if missing:
        raise ProtolibInputError(f"Bank {bank.path} has no parameter(s) {missing}; it has {list(bank.parameters)}.")
    table["inclination"] = bank.inclination[matches.system, matches.projection]
    table["position_angle"] = bank.position_angle[matches.system, matches.projection]
    return table


def truth_parameters(bank: Bank, system: int, projection: int = 0) -> dict[str, float]:
    """The true parameters of a bank system seen in one projection (for a simulated target)."""
    truths = {name: float(values[system]) for name, values in bank.parameters.items()}
    truths["inclination"] = float(bank.inclination[system, projection])
    truths["position_angle"] = float(bank.position_angle[system, projection])
    return truths


def describe_parameter(name: str, parameter_info: Mapping[str, Parameter] | None = None) -> Parameter:
    """A parameter's unit, axis label and log scaling: from ``parameter_info`` (e.g. a bank's), else
    :data:`~protolib.parameters.PARAMETERS` or the viewing angles, else unitless and linear."""
    if parameter_info and name in parameter_info:
        return parameter_info[name]
    if name in PARAMETERS:
        return PARAMETERS[name]
    if name in VIEWING_PARAMETERS:
        return VIEWING_PARAMETERS[name]
    return Parameter(name, "", "", log_scale=False)


def scaled_for_summary(values: np.ndarray, log_scale: bool, name: str) -> np.ndarray:
    """Parameter values as they are summarised and plotted: float64, in log10 when ``log_scale``.

    Raises:
        ProtolibInputError: a log-scaled parameter (``name``, for the message) has values <= 0.
    """
    return scale_parameters(values, log_scale, name)
