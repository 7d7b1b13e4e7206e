"""Synthetic targets to measure the image-space verdict on: plain systems a bank can reproduce, and misfits it cannot.

Real maps hold what no bank image can: a companion, an off-centre clump, a ring, spiral arms, a
streamer falling onto the source. The verdict (:mod:`protolib.goodness_of_fit`) must flag those
and pass plain systems drawn from the bank's own prior. :func:`synthetic_targets` makes both, at
the bank's resolution, pixel grid and noise, so that their rates can be measured
(:func:`verdict_rates`) for any bank, the teaching bank or one fitted to a map.

Every target starts from a plain system drawn from the bank's prior (a seed of its own, never the
bank's) and seen at a random angle, whose brightest pixel is ``peak_snr`` times the bank's noise
(systems are drawn until enough fall in the asked range: the noise is the bank's, so the S/N is the
system's own, as in a survey). A misfit adds one structure, drawn as clean emission, convolved with the
bank's beam, and scaled so that its brightest pixel is a fraction of the system's (``ADDED_FRACTION``):

- ``binary``: a second system from the prior, 3 beams or more from the first;
- ``clump``: a compact Gaussian clump (0.3-1 beam wide) 2-6 beams off the source;
- ``ring``: a narrow ring (0.3 beam wide) of 2-6 beams radius, inclined at random;
- ``spiral``: two logarithmic arms (pitch 15-30 deg) from 1.5 to 6 beams, inclined at random;
- ``streamer``: a narrow arc (0.5 beam wide) from the field's edge to 2 beams from the source, turning
  by 30-120 deg on its way in.

Written here, not taken from a library: no package draws these shapes on a simulator's grid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .bank import Bank, draw_systems
from .instrument import Instrument, beam_noise
from .matching import Matcher, fit_matches
from .parameters import Prior
from .runtime import ProtolibInputError, typed_settings
from .simulator import NUISANCE_FIELDS, RENDER_KEYS, SimulatorConfig, render

__all__ = [
    "KINDS",
    "MISFIT_KINDS",
    "ADDED_FRACTION",
    "SNR_BINS",
    "SyntheticTargets",
    "synthetic_targets",
    "targets_for_bank",
    "verdict_rates",
    "rates_table",
]

MISFIT_KINDS = ("binary", "clump", "ring", "spiral", "streamer")
KINDS = ("plain", *MISFIT_KINDS)
ADDED_FRACTION = (0.25, 0.6)  # the added structure's brightest pixel over the system's, drawn uniformly
SNR_BINS = ((30.0, 60.0), (60.0, 150.0), (150.0, 300.0))  # the peak S/N ranges the verdict is measured in


@dataclass
class SyntheticTargets:
    """Synthetic targets of one kind at a bank's resolution, pixel grid and noise.

    Attributes:
        kind: one of :data:`KINDS`.
        images: ``(n, H, W)`` the targets [the bank's unit], noise included.
        peak_snr: ``(n,)`` the plain system's brightest pixel over the noise rms.
        structure_fraction: ``(n,)`` the added structure's brightest pixel over the system's (0 for ``plain``).
        parameters: name -> ``(n,)`` the plain system's parameters (and ``inclination``).
        noise_rms: the noise rms of the images [the bank's unit].
    """

    kind: str
    images: np.ndarray
    peak_snr: np.ndarray
    structure_fraction: np.ndarray
    parameters: dict = field(default_factory=dict)
    noise_rms: float = 0.0


def targets_for_bank(
    bank: Bank, kind: str, n: int, *, snr: tuple[float, float] = (30.0, 300.0), seed: int = 0
) -> SyntheticTargets:
    """:func:`synthetic_targets` at ``bank``'s simulator, instrument and prior (the bank must be simulated by
    protolib)."""
    config = bank.simulator_config
    if config is None or "prior" not in bank.attrs:
        raise ProtolibInputError(
            f"{bank.path} was not made by the protolib simulator: its prior and renderer are unknown."
        )
    prior = typed_settings(Prior, json.loads(bank.attrs["prior"]), f"{bank.path}: the bank's prior")
    return synthetic_targets(kind, n, simulator=config, instrument=bank.instrument, prior=prior, snr=snr, seed=seed)


def synthetic_targets(
    kind: str,
    n: int,
    *,
    simulator: SimulatorConfig,
    instrument: Instrument,
    prior: Prior,
    snr: tuple[float, float] = (30.0, 300.0),
    seed: int = 0,
    most_draws: int = 40,
) -> SyntheticTargets:
    """``n`` targets of ``kind`` (:data:`KINDS`) whose plain system has a peak S/N in ``snr`` (see the module).

    Systems are drawn in batches of ``4 n`` until ``n`` fall in ``snr``; after ``most_draws`` batches
    a ``ValueError`` says that the prior rarely gives such a system at this noise.
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown kind of synthetic target {kind!r}; choose from {', '.join(KINDS)}.")
    if instrument.beam is None or not instrument.noise_rms_jy_beam > 0:
        raise ValueError(
            "Synthetic targets need a bank with a beam and noise (the verdict judges residuals by the noise)."
        )
    rng = np.random.default_rng([seed, KINDS.index(kind), 17])
    observed, parameters = _plain_systems(n, simulator, instrument, prior, snr, rng, most_draws)
    fraction = np.zeros(n) if kind == "plain" else rng.uniform(*ADDED_FRACTION, n)
    images = observed.copy()
    peaks = observed.reshape(n, -1).max(axis=1)
    if kind != "plain":
        for i in range(n):
            shape = _structure(kind, simulator, instrument, prior, rng)
            images[i] += fraction[i] * peaks[i] * shape / shape.max()
    pixel_arcsec = simulator.pixel_size_au / instrument.distance_pc
    noise = beam_noise(images.shape, instrument.beam, pixel_arcsec, rng).numpy()
    return SyntheticTargets(
        kind,
        (images + instrument.noise_rms_jy_beam * noise).astype(np.float32),
        peaks / instrument.noise_rms_jy_beam,
        fraction,
        parameters,
        instrument.noise_rms_jy_beam,
    )


def _render_observed(systems: dict, simulator: SimulatorConfig, instrument: Instrument) -> np.ndarray:
    """Beam-convolved, noise-free images ``(n, H, W)`` of drawn systems (first projection each)."""
    params = {
        k: torch.as_tensor(systems[k], dtype=torch.float64) for k in (*RENDER_KEYS, *NUISANCE_FIELDS) if k in systems
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the bank renders: on a shared machine a second thread waits more than it works
    try:
        with torch.no_grad():
            clean = render(
                params,
                torch.as_tensor(systems["inclination"][:, 0]),
                torch.as_tensor(systems["position_angle"][:, 0]),
                simulator,
                instrument.distance_pc,
            )
            return instrument.observe(clean, simulator.pixel_size_au, None).numpy()
    finally:
        torch.set_num_threads(threads)


def _plain_systems(n: int, simulator, instrument, prior, snr, rng, most_draws: int) -> tuple[np.ndarray, dict]:
    """``n`` plain systems' noise-free images with a peak S/N in ``snr``, and their parameters."""
    images, kept = [], []
    for _ in range(most_draws):
        systems = draw_systems(4 * n, 1, int(rng.integers(2**31)), prior, simulator)
        observed = _render_observed(systems, simulator, instrument)
        peak_snr = observed.reshape(len(observed), -1).max(axis=1) / instrument.noise_rms_jy_beam
        inside = np.flatnonzero((peak_snr >= snr[0]) & (peak_snr < snr[1]))
        images.append(observed[inside])
        kept.append({k: (v[inside, 0] if v.ndim == 2 else v[inside]) for k, v in systems.items()})
        if sum(len(i) for i in images) >= n:
            parameters = {k: np.concatenate([p[k] for p in kept])[:n] for k in kept[0]}
            return np.concatenate(images)[:n], parameters
    raise ValueError(
        f"The prior rarely gives a system with a peak S/N of {snr[0]:g}-{snr[1]:g} at this noise: "
        f"{sum(len(i) for i in images)} of {4 * n * most_draws} drawn."
    )


def _structure(
    kind: str, simulator: SimulatorConfig, instrument: Instrument, prior: Prior, rng: np.random.Generator
) -> np.ndarray:
    """One structure of ``kind``, beam-convolved and noise-free, ``(H, W)``, peak positive (scaled by the caller)."""
    size = simulator.image_size
    beam_px = instrument.beam.major_arcsec * instrument.distance_pc / simulator.pixel_size_au  # beam FWHM [pixels]
    half = (size - 1) / 2.0
    y, x = np.mgrid[0:size, 0:size] - half
    if kind == "binary":
        companion = _render_observed(
            draw_systems(1, 1, int(rng.integers(2**31)), prior, simulator), simulator, instrument
        )[0]
        return _shifted(companion, _offset(rng, 3.0 * beam_px, 0.4 * size))
    if kind == "clump":
        dy, dx = _offset(rng, 2.0 * beam_px, min(6.0 * beam_px, 0.4 * size))
        clean = _gaussian_line(x, y, np.array([dx]), np.array([dy]), rng.uniform(0.3, 1.0) * beam_px / 2.355)
    else:
        cos_i, angle = np.cos(np.radians(rng.uniform(0.0, 70.0))), rng.uniform(0.0, np.pi)
        radius, phi = _path(kind, rng, beam_px, size)
        px, py = radius * np.cos(phi), radius * np.sin(phi) * (cos_i if kind != "streamer" else 1.0)
        px, py = px * np.cos(angle) - py * np.sin(angle), px * np.sin(angle) + py * np.cos(angle)
        clean = _gaussian_line(x, y, px, py, (0.5 if kind == "streamer" else 0.3) * beam_px / 2.355)
    return instrument.observe(clean[None].astype(np.float32), simulator.pixel_size_au, None)[0]


def _path(kind: str, rng: np.random.Generator, beam_px: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Points ``(radius [px], angle [rad])`` along a ring, two spiral arms or a streamer, about a pixel apart."""
    edge = 0.48 * size
    if kind == "ring":
        radius = rng.uniform(2.0 * beam_px, min(6.0 * beam_px, 0.4 * size))
        phi = np.linspace(0.0, 2 * np.pi, max(16, int(2 * np.pi * radius)), endpoint=False)
        return np.full_like(phi, radius), phi
    if kind == "spiral":
        inner, outer = 1.5 * beam_px, min(6.0 * beam_px, 0.45 * size)
        growth = np.tan(np.radians(rng.uniform(15.0, 30.0)))  # r = inner exp(growth phi)
        phi = np.linspace(0.0, np.log(outer / inner) / growth, 400)
        radius, start = inner * np.exp(growth * phi), rng.uniform(0.0, 2 * np.pi)
        return np.concatenate([radius, radius]), np.concatenate([start + phi, start + np.pi + phi])
    turn, start = np.radians(rng.uniform(30.0, 120.0)), rng.uniform(0.0, 2 * np.pi)
    radius = np.linspace(edge, 2.0 * beam_px, 400)
    return radius, start + turn * (edge - radius) / (edge - 2.0 * beam_px)


def _gaussian_line(x: np.ndarray, y: np.ndarray, px: np.ndarray, py: np.ndarray, sigma: float) -> np.ndarray:
    """The sum of circular Gaussians of ``sigma`` [px] at the points ``(px, py)``, capped at its 95th-percentile
    brightness along the line (so where points crowd, as at a spiral's start, the line is not brighter)."""
    image = np.zeros_like(x, dtype=np.float64)
    for cx, cy in zip(px, py):
        image += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    if len(px) > 1:
        top = np.percentile(
            image[
                np.round(py + (x.shape[0] - 1) / 2).astype(int).clip(0, x.shape[0] - 1),
                np.round(px + (x.shape[1] - 1) / 2).astype(int).clip(0, x.shape[1] - 1),
            ],
            95,
        )
        image = np.minimum(image, top)
    return image


def _offset(rng: np.random.Generator, least: float, most: float) -> tuple[int, int]:
    """A whole-pixel offset ``(rows, columns)`` of ``least``-``most`` pixels in a random direction."""
    distance, angle = rng.uniform(least, max(least, most)), rng.uniform(0.0, 2 * np.pi)
    return int(round(distance * np.sin(angle))), int(round(distance * np.cos(angle)))


def _shifted(image: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    """``image`` moved by whole pixels ``(rows, columns)``, zero where it moved in from outside."""
    out = np.zeros_like(image)
    dy, dx = offset
    h, w = image.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def verdict_rates(
    matcher: Matcher,
    *,
    kinds=KINDS,
    bins=SNR_BINS,
    n: int = 16,
    seed: int = 0,
    top_k: int = 200,
    n_reference: int = 48,
    progress: bool = True,
    flux_tolerance: float = 0.0,
) -> list[dict]:
    """The image-space verdict on ``n`` synthetic targets of each kind in each peak-S/N bin, one row per target.

    Each target is matched as ``protolib match`` matches a bank target (``top_k`` matches, then
    :func:`~protolib.matching.fit_matches`); a row holds its kind, S/N bin, whether it was flagged
    (not reproduced), the failed tests and the statistics they use. ``n_reference``: the reference images of
    the relative test (:func:`~protolib.matching.fit_matches`); ``flux_tolerance``: how far each match's fluxes may be
    scaled to fit (:class:`~protolib.goodness_of_fit.ImageFit`).
    """
    rows = []
    cells = [(kind, lo, hi) for kind in kinds for lo, hi in bins]
    for kind, lo, hi in tqdm(cells, desc="verdict on synthetic targets", unit="set", disable=not progress):
        targets = targets_for_bank(matcher.bank, kind, n, snr=(lo, hi), seed=seed)
        for image, snr, fraction in zip(targets.images, targets.peak_snr, targets.structure_fraction):
            verdict = fit_matches(
                matcher,
                image,
                matcher.match(image, top_k=top_k),
                n_reference=n_reference,
                seed=seed,
                flux_tolerance=flux_tolerance,
            ).verdict
            rows.append({"kind": kind, "snr_bin": f"{lo:g}-{hi:g}", **_verdict_row(verdict, snr, fraction)})
    return rows


def _verdict_row(verdict, snr: float, fraction: float) -> dict:
    """One synthetic target's row, after its kind and S/N bin: its S/N and structure, the verdict and its statistics."""
    peak = verdict.residual_peak or {}
    return {
        "peak_snr": float(snr),
        "structure_fraction": float(fraction),
        "flagged": not verdict.reproduces,
        "reasons": list(verdict.reasons),
        "best_reduced_chi2": verdict.best_reduced_chi2,
        "best_excess": verdict.best_excess,
        "residual_peak_sigma": peak.get("significance"),
        "residual_peak_fraction": peak.get("fraction_of_peak"),
    }


def rates_table(rows: list[dict]) -> list[dict]:
    """The fraction flagged per kind (rows) and S/N bin (columns), with the count, from :func:`verdict_rates` rows."""
    table = []
    for kind in dict.fromkeys(r["kind"] for r in rows):
        line = {"kind": kind}
        for snr_bin in dict.fromkeys(r["snr_bin"] for r in rows):
            flags = [r["flagged"] for r in rows if r["kind"] == kind and r["snr_bin"] == snr_bin]
            line[f"S/N {snr_bin}"] = float(np.mean(flags)) if flags else float("nan")
        line["n per bin"] = sum(r["kind"] == kind for r in rows) // max(1, len({r["snr_bin"] for r in rows}))
        table.append(line)
    return table
