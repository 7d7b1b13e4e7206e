"""The band-dropout Siamese network's parts: several bands of one system as one input, any subset of them present.

A bank of several bands (``simulator.frequencies_ghz``) holds each system in every band. One image
measures dust opacity x mass x temperature; two or more measure the spectral index and so β and,
through it, the optical depth. ``siamese.model.bands: all`` trains a network that embeds any subset of
the bank's bands, so that a user with one map, two or three gets one embedding in the same space.

What the network sees (:class:`BandPreprocessing`), for a bank of ``B`` bands:

- ``2B`` image channels: each band's image under its own per-image stretch (as the one-band network
  sees it, so the pretrained encoder's filters apply), zero where the band is absent, then one
  presence plane per band (all ones or all zeros). The mask tells an absent band from a blank one.
- numbers beside the pixels (:func:`n_band_inputs`): each band's log total flux, standardised on the
  training images of that band; the spectral index ``α = Δ log F / Δ log ν`` of the total fluxes between
  every pair of bands, standardised on the training images; each zero where a band it needs is absent;
  then the presence flags. The per-image stretch throws away the brightness of each band, and with it
  the band ratio; the log fluxes keep it. The spectral index is given as well, explicitly: it is a
  difference of two log fluxes each spread over a decade or more between systems, while β moves it by
  a fraction of that (``α ≈ 2 + β`` where the dust is optically thin), so a network left to take the
  difference itself would have to learn weights that cancel to a few per cent; given α, the
  latent layer reads β's imprint from one input.

How the pretrained one-band encoder becomes a band encoder (:func:`widen_encoder`,
:func:`load_widened_encoder`): its first convolution gets ``2B`` input channels and its latent layer
extra inputs for the numbers; the reference band's channel and flux input take the pretrained weights,
every other band, spectral index and mask starts at zero. At initialisation, then, the reference band alone is embedded
exactly as the pretrained encoder embeds it (today's network's starting point), and the other bands
enter only as training finds them useful. Stacking the bands as channels (rather than one encoder
per band, pooled) lets the first layer compare bands pixel by pixel, which is where a spectral-index
map lives, at the cost of nothing beyond a wider first layer.

Band dropout (:class:`BandDropout`): each training image keeps each band with chance ``band_keep``
(at least one kept), except a share ``reference_alone`` of images that is shown in the reference band
alone, so that one-band use, today's case, is trained as often as any subset. Projections of one
system are positives in every batch, so images of one system seen in different subsets are taught to
embed alike.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .autoencoder import BankImages
from .images import AugmentationConfig, ImagePreprocessing, augment_images
from .runtime import ProtolibInputError

__all__ = [
    "BAND_CHOICES",
    "DEFAULT_BAND_KEEP",
    "DEFAULT_REFERENCE_ALONE",
    "BAND_MATCH_TOLERANCE",
    "BandPreprocessing",
    "BandDropout",
    "BandBankImages",
    "widen_encoder",
    "load_widened_encoder",
    "augment_bands",
    "band_positions",
    "reference_band",
    "n_band_inputs",
]

BAND_CHOICES = (None, "reference", "all")
DEFAULT_BAND_KEEP = 0.5  # chance that a band is kept in a training image
DEFAULT_REFERENCE_ALONE = 0.25  # share of training images shown in the reference band alone
# standardised spectral indices are cut at this many spreads: a band whose total flux is noise (or negative, floored at
# FLUX_FLOOR_JY) gives an index of tens, which would swamp the others
INDEX_CLIP = 5.0
BAND_MATCH_TOLERANCE = 0.05  # a map's frequency within this fraction of a band's is that band (the bank's tolerance)


def n_band_inputs(n_bands: int) -> int:
    """How many numbers a network of ``n_bands`` bands takes beside the pixels: each band's log flux, the spectral
    index of each pair of bands, each band's presence flag."""
    return 2 * n_bands + n_bands * (n_bands - 1) // 2


def reference_band(bank) -> int:
    """The index of ``bank``'s reference band (the root attributes' frequency: the band the one-band networks read)."""
    frequencies = bank.frequencies_ghz
    reference = float(bank.attrs.get("frequency_ghz", frequencies[0]))
    return int(np.argmin([abs(math.log(f / reference)) for f in frequencies]))


def band_positions(frequencies_ghz, given_ghz, what: str = "the network") -> list[int]:
    """The index among ``frequencies_ghz`` of each frequency in ``given_ghz`` (within :data:`BAND_MATCH_TOLERANCE`).

    Refused in one line: a frequency no band is near, or two images given for one band.
    """
    positions = []
    for frequency in given_ghz:
        frequency = float(frequency)
        index = int(np.argmin([abs(math.log(f / frequency)) for f in frequencies_ghz]))
        if not frequency > 0 or abs(frequencies_ghz[index] / frequency - 1.0) > BAND_MATCH_TOLERANCE:
            raise ProtolibInputError(
                f"An image at {frequency:g} GHz is in no band of {what} (its bands: "
                f"{', '.join(f'{f:g}' for f in frequencies_ghz)} GHz)."
            )
        if index in positions:
            raise ProtolibInputError(
                f"Two images were given for the {frequencies_ghz[index]:g} GHz band of {what}; give one per band."
            )
        positions.append(index)
    return positions


@dataclass
class BandPreprocessing:
    """Each band's image preprocessing, and how the bands and their presence become the network's inputs.

    Attributes:
        bands: one :class:`~protolib.images.ImagePreprocessing` per band (its beam's pixels per beam,
            its log-flux centre and spread); the reference band's is the pretrained autoencoder's.
        frequencies_ghz: the bands' frequencies, increasing.
        reference: the reference band's index.
        index_centre, index_spread: the median and spread (1.4826 times the median absolute deviation)
            of the training images' spectral index between each pair of bands (:meth:`pairs` order): a
            robust spread, because a faint system's band of noise gives an index far off (and the mean and
            standard deviation with it); standardised indices are cut at :data:`INDEX_CLIP` spreads.
    """

    bands: list[ImagePreprocessing]
    frequencies_ghz: list[float]
    reference: int
    index_centre: list[float] = field(default_factory=list)
    index_spread: list[float] = field(default_factory=list)

    def __post_init__(self):
        n_pairs = len(self.pairs())
        self.index_centre = [float(v) for v in self.index_centre] or [0.0] * n_pairs
        self.index_spread = [float(v) for v in self.index_spread] or [1.0] * n_pairs
        if len(self.bands) != len(self.frequencies_ghz) or not 0 <= self.reference < len(self.bands):
            raise ValueError(
                f"{len(self.bands)} band preprocessings for {len(self.frequencies_ghz)} bands, reference "
                f"{self.reference}"
            )
        if len(self.index_centre) != n_pairs or len(self.index_spread) != n_pairs or min(self.index_spread) <= 0:
            raise ValueError(f"spectral-index centres and positive spreads for {n_pairs} pairs of bands are needed")

    def pairs(self) -> list[tuple[int, int]]:
        """The pairs of bands whose spectral index the network sees, ``(lower, upper)``."""
        return list(itertools.combinations(range(len(self.bands)), 2))

    def spectral_indices(self, images: torch.Tensor) -> torch.Tensor:
        """The spectral index of the total fluxes of images ``(N, B, H, W)`` between each pair of bands, ``(N,
        pairs)``, not standardised."""
        log_flux = torch.stack([p.log_flux(images[:, b]) for b, p in enumerate(self.bands)], 1)  # (N, B)
        log_nu = np.log10(self.frequencies_ghz)
        return torch.stack([(log_flux[:, j] - log_flux[:, i]) / (log_nu[j] - log_nu[i]) for i, j in self.pairs()], 1)

    @property
    def n_bands(self) -> int:
        return len(self.bands)

    def __call__(self, images: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network inputs from images ``(N, B, H, W)`` and presence ``(N, B)`` bool: pixels ``(N, 2B, H, W)`` and
        the log fluxes, spectral indices and presence flags ``(N, n_band_inputs(B))``."""
        images = images.float()
        mask = present.to(images.device, images.dtype)  # (N, B)
        pixels, fluxes = [], []
        for b, preprocessing in enumerate(self.bands):
            stretched, flux = preprocessing(images[:, b])  # (N, 1, H, W), (N, 1)
            pixels.append(stretched * mask[:, b, None, None, None])
            fluxes.append(flux * mask[:, b, None])
        centre, spread = (
            torch.tensor(v, dtype=images.dtype, device=images.device) for v in (self.index_centre, self.index_spread)
        )
        both = torch.stack([mask[:, i] * mask[:, j] for i, j in self.pairs()], 1)  # (N, pairs)
        indices = ((self.spectral_indices(images) - centre) / spread).clamp(-INDEX_CLIP, INDEX_CLIP) * both
        planes = mask[:, :, None, None].expand(-1, -1, *images.shape[-2:])  # (N, B, H, W)
        return torch.cat([*pixels, planes], 1), torch.cat([*fluxes, indices, mask], 1)

    def to_dict(self) -> dict:
        return {
            "bands": [p.to_dict() for p in self.bands],
            "frequencies_ghz": [float(f) for f in self.frequencies_ghz],
            "reference": int(self.reference),
            "index_centre": list(self.index_centre),
            "index_spread": list(self.index_spread),
        }

    @classmethod
    def from_dict(cls, data: dict) -> BandPreprocessing:
        bands = [ImagePreprocessing.from_dict(p) for p in data["bands"]]
        return cls(
            bands,
            [float(f) for f in data["frequencies_ghz"]],
            int(data["reference"]),
            list(data["index_centre"]),
            list(data["index_spread"]),
        )

    @classmethod
    def fit_on_bank(cls, bank, systems: np.ndarray, reference: ImagePreprocessing) -> BandPreprocessing:
        """Each band's preprocessing for ``bank`` (opened whole), with ``reference``'s stretch settings, its log flux
        fit on ``systems`` (at most ~1000 of them); the reference band keeps ``reference`` itself."""
        index = reference_band(bank)
        settings = {k: getattr(reference, k) for k in ("stretch", "asinh_softening", "reference_distance_pc")}
        flux_systems = np.asarray(systems)[:: max(1, len(systems) // 1000)]
        images = bank.load_images(flux_systems)  # (n, P, B, H, W)
        bands = []
        for b, frequency in enumerate(bank.frequencies_ghz):
            if b == index:
                bands.append(reference)
                continue
            with bank.band(frequency) as one:
                preprocessing = ImagePreprocessing.from_bank(one, **settings)
            bands.append(preprocessing.fit(images[:, :, b].reshape(-1, *images.shape[-2:])))
        fitted = cls(bands, list(bank.frequencies_ghz), index)
        indices = fitted.spectral_indices(torch.as_tensor(images.reshape(-1, *images.shape[2:]), dtype=torch.float64))
        if len(indices) > 1:  # else the defaults: centre 0, spread 1
            centre = indices.median(0).values
            spread = 1.4826 * (indices - centre).abs().median(0).values
            fitted.index_centre = centre.tolist()
            fitted.index_spread = [s if s > 0 else 1.0 for s in spread.tolist()]
        return fitted


@dataclass
class BandDropout:
    """Which bands each training image keeps: the reference band alone for a share ``reference_alone``, else each
    band with chance ``keep``, at least one."""

    n_bands: int
    reference: int
    keep: float = DEFAULT_BAND_KEEP
    reference_alone: float = DEFAULT_REFERENCE_ALONE
    fixed_seed: int = field(default=7, repr=False)  # validation draws the same subsets every epoch

    def draw(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """Presence ``(n, B)`` bool; drawn from ``generator`` (training), or the same every call when ``None``."""
        generator = generator if generator is not None else torch.Generator().manual_seed(self.fixed_seed)
        present = torch.rand(n, self.n_bands, generator=generator) < self.keep
        alone = torch.rand(n, generator=generator) < self.reference_alone
        present[alone] = False
        fallback = torch.randint(0, self.n_bands, (n,), generator=generator)
        fallback[alone] = self.reference
        none = ~present.any(1)
        present[none, fallback[none]] = True
        return present


def augment_bands(
    images: torch.Tensor,
    config: AugmentationConfig,
    generator: torch.Generator,
    *,
    beams: list,
    pixel_arcsec: float,
    noise_rms: list[float],
) -> torch.Tensor:
    """:func:`~protolib.images.augment_images` of images ``(N, B, H, W)``, one system's bands turned alike.

    The position angle, flips and beam widening are one draw for all bands of an image (one source on
    the sky, seen at one position angle); the noise is each band's own (its beam, its rms), drawn
    independently, as the bands of a real source are observed separately.
    """
    geometry = AugmentationConfig(config.rotate, config.flip, config.beam_jitter, 0.0)
    state = generator.get_state()
    turned = []
    for b, beam in enumerate(beams):
        generator.set_state(state)
        turned.append(augment_images(images[:, b], geometry, generator, beam=beam, pixel_arcsec=pixel_arcsec))
    if config.noise_jitter > 0:
        noise = AugmentationConfig(False, False, 0.0, config.noise_jitter)
        turned = [
            augment_images(band, noise, generator, beam=beam, pixel_arcsec=pixel_arcsec, noise_rms=rms)
            for band, beam, rms in zip(turned, beams, noise_rms)
        ]
    return torch.stack(turned, 1)


class BandBankImages(BankImages):
    """:class:`~protolib.autoencoder.BankImages` of a bank of several bands: batches ``(B, bands, H, W)``, each band
    augmented with its own beam and noise (:func:`augment_bands`)."""

    def __init__(self, bank, split, training, augmentation, device):
        super().__init__(bank, split, training, augmentation, device)
        instruments = bank.band_instruments
        self.beams = [i.beam for i in instruments]
        self.band_noise = [i.noise_rms_jy_beam for i in instruments]

    def to_device(self, images: np.ndarray, generator: torch.Generator | None) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(images)).to(self.device, non_blocking=True)
        if generator is None or not self.augmentation.enabled:
            return tensor
        if any(beam is None for beam in self.beams):
            return augment_images(tensor.flatten(0, 1), self.augmentation, generator).reshape(tensor.shape)
        return augment_bands(
            tensor,
            self.augmentation,
            generator,
            beams=self.beams,
            pixel_arcsec=self.pixel_arcsec,
            noise_rms=self.band_noise,
        )


def widen_encoder(encoder: nn.Module, n_bands: int) -> None:
    """Give a one-band :class:`~protolib.autoencoder.Encoder` the inputs of ``n_bands`` bands, in place: a first
    convolution of ``2 n_bands`` channels (images and presence planes) and a latent layer with
    :func:`n_band_inputs` extra inputs (log fluxes, spectral indices and presence flags)."""
    first = encoder.convolutions[0]
    encoder.convolutions[0] = nn.Conv2d(
        2 * n_bands, first.out_channels, first.kernel_size, stride=first.stride, padding=first.padding
    )
    latent = encoder.to_latent
    features = latent.in_features - int(encoder.use_flux)
    encoder.to_latent = nn.Linear(features + n_band_inputs(n_bands), latent.out_features)
    encoder.use_flux = True


def load_widened_encoder(encoder: nn.Module, pretrained: nn.Module, reference: int, n_bands: int) -> None:
    """Copy a pretrained one-band encoder into a widened one (:func:`widen_encoder`): the reference band's channel
    and flux input take the pretrained weights, every other band and every presence input starts at zero."""
    state = {k: v.clone() for k, v in pretrained.state_dict().items()}
    conv = state.pop("convolutions.0.weight")  # (C, 1, k, k)
    widened = torch.zeros(conv.shape[0], 2 * n_bands, *conv.shape[2:], dtype=conv.dtype)
    widened[:, reference] = conv[:, 0]
    state["convolutions.0.weight"] = widened
    weight = state.pop("to_latent.weight")  # (latent, features [+ 1])
    features = weight.shape[1] - int(pretrained.use_flux)
    latent = torch.zeros(weight.shape[0], features + n_band_inputs(n_bands), dtype=weight.dtype)
    latent[:, :features] = weight[:, :features]
    if pretrained.use_flux:
        latent[:, features + reference] = weight[:, features]
    state["to_latent.weight"] = latent
    encoder.load_state_dict(state)
