"""Parameter scaling and normalisation: log10 for quantities spanning decades, then z-score or min-max.

:func:`scale_parameters` is the one place a parameter goes to the scale it is compared on (log10
where log-scaled); :func:`scaled_image_parameters` gives that for every image of a bank, and
:class:`ParameterNormaliser` scales and then standardises on training systems.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .parameters import PARAMETERS
from .runtime import ProtolibInputError

__all__ = ["ParameterNormaliser", "scale_parameters", "scaled_image_parameters"]


def scale_parameters(values, log_scale, names) -> np.ndarray:
    """Physical parameter values on the scale they are compared on: log10 (dex) where log-scaled, as given otherwise.

    Arguments:
        values: one parameter's values ``(n,)`` (then ``log_scale`` is one bool and ``names`` its name),
            or a table ``(n, K)`` (then ``log_scale`` and ``names`` have one entry per column).
        log_scale: whether each parameter is log-scaled.
        names: the parameters' names, for the error message.

    Returns:
        A float64 array of the same shape.

    Raises:
        ProtolibInputError: a log-scaled parameter has values <= 0 (they are named).
    """
    values = np.asarray(values, dtype=np.float64)
    if np.ndim(log_scale) == 0:
        if not log_scale:
            return values
        if np.any(values <= 0):
            raise ProtolibInputError(f"Parameter {names} is log-scaled but has values <= 0.")
        return np.log10(values)
    logs = np.asarray(log_scale, dtype=bool)
    out = values.copy()
    logged = out[:, logs]
    if np.any(logged <= 0):
        bad = [n for n, lg, col in zip(names, logs, values.T) if lg and np.any(col <= 0)]
        raise ProtolibInputError(f"Parameters {bad} are log-scaled but have values <= 0.")
    out[:, logs] = np.log10(logged)
    return out


def scaled_image_parameters(bank, names: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
    """Every image's parameters of a :class:`~protolib.bank.Bank`, on the scale they are compared on.

    A system's parameters are repeated for each of its projections; ``"inclination"`` (deg) is the
    image's own viewing angle.

    Returns:
        ``values (n_systems * n_projections, K)``, log10 (dex) where log-scaled, rows in the bank's image
        order (system-major), and ``log_scale``: one bool per name.
    """
    columns, logs = [], []
    for name in names:
        if name == "inclination":
            values, log = bank.inclination.reshape(-1).astype(np.float64), False
        else:
            log = bank.parameter_info[name].log_scale
            values = np.repeat(bank.parameters[name].astype(np.float64), bank.n_projections)
            values = scale_parameters(values, log, name)
        columns.append(values)
        logs.append(bool(log))
    return np.stack(columns, axis=1), logs


@dataclass
class ParameterNormaliser:
    """Maps physical parameters to dimensionless numbers of order one, and back.

    Fit it on training systems only, save it with the model (:meth:`to_dict`), and use the same
    one everywhere after.

    Example:
        >>> norm = ParameterNormaliser(["stellar_mass", "disk_radius"]).fit(train_table)  # doctest: +SKIP
        >>> z = norm.transform(table)          # (n, 2), zero mean and unit spread on train
        >>> norm.inverse(z)                    # back to Msun and au
    """

    names: list[str]
    method: str = "zscore"
    log_scale: list[bool] | None = None
    centre: np.ndarray | None = field(default=None, repr=False)
    spread: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.method not in ("zscore", "minmax"):
            raise ProtolibInputError(f"Normalisation method must be 'zscore' or 'minmax', got {self.method!r}.")
        if self.log_scale is None:
            self.log_scale = [PARAMETERS[n].log_scale if n in PARAMETERS else True for n in self.names]
        self._log = np.asarray(self.log_scale, dtype=bool)

    def _to_log(self, table: np.ndarray) -> np.ndarray:
        table = np.asarray(table, dtype=np.float64)
        if table.ndim != 2 or table.shape[1] != len(self.names):
            raise ProtolibInputError(
                f"Expected a table of shape (n, {len(self.names)}) for {self.names}, got {table.shape}."
            )
        return scale_parameters(table, self._log, self.names)

    def fit(self, table: np.ndarray) -> ParameterNormaliser:
        """Learn centre and spread from ``table`` ``(n, len(names))`` of training systems."""
        logged = self._to_log(table)
        if self.method == "zscore":
            self.centre, self.spread = logged.mean(0), logged.std(0)
        else:
            self.centre, self.spread = logged.min(0), logged.max(0) - logged.min(0)
        self.spread = np.where(self.spread > 0, self.spread, 1.0)
        return self

    @classmethod
    def fit_on_systems(cls, names: Sequence[str], method: str, bank, systems: np.ndarray) -> ParameterNormaliser:
        """A normaliser of the parameters ``names`` fit on the :class:`~protolib.bank.Bank` systems ``systems`` (the
        training ones)."""
        return cls(list(names), method).fit(bank.parameter_table(list(names))[systems])

    def transform(self, table: np.ndarray) -> np.ndarray:
        """Physical values ``(n, k)`` to normalised values ``(n, k)``."""
        if self.centre is None:
            raise RuntimeError("Call fit() on training systems before transform().")
        return (self._to_log(table) - self.centre) / self.spread

    def inverse(self, normalised: np.ndarray) -> np.ndarray:
        """Normalised values back to physical units."""
        out = np.asarray(normalised, dtype=np.float64) * self.spread + self.centre
        out[:, self._log] = 10 ** out[:, self._log]
        return out

    def to_dict(self) -> dict:
        return {
            "names": list(self.names),
            "method": self.method,
            "log_scale": [bool(x) for x in self.log_scale],
            "centre": None if self.centre is None else self.centre.tolist(),
            "spread": None if self.spread is None else self.spread.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> ParameterNormaliser:
        """The normaliser :meth:`to_dict` wrote; its centre and spread are checked as :meth:`fit` makes them (one
        finite centre and one positive, finite spread per parameter), since a zero spread would turn every
        normalised value into NaN."""
        norm = cls(list(data["names"]), data["method"], list(data["log_scale"]))
        if len(norm.log_scale) != len(norm.names):
            raise ProtolibInputError(
                f"The parameter normaliser has {len(norm.log_scale)} log-scale flags for {len(norm.names)} parameters."
            )
        if data.get("centre") is not None:
            centre, spread = np.asarray(data["centre"], dtype=np.float64), np.asarray(data["spread"], dtype=np.float64)
            if centre.shape != (len(norm.names),) or spread.shape != (len(norm.names),):
                raise ProtolibInputError(
                    f"The parameter normaliser needs one centre and one spread for each of {norm.names}."
                )
            if not (np.all(np.isfinite(centre)) and np.all(np.isfinite(spread)) and np.all(spread > 0)):
                bad = [
                    n
                    for n, c, w in zip(norm.names, centre, spread)
                    if not (math.isfinite(c) and math.isfinite(w) and w > 0)
                ]
                raise ProtolibInputError(
                    f"The parameter normaliser's centre and spread must be finite, the spread positive; "
                    f"they are not for {bad}."
                )
            norm.centre, norm.spread = centre, spread
        return norm
