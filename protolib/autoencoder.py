"""A convolutional autoencoder: bank images to a compact latent vector and back (pipeline step 1).

The encoder sees the stretched image and, optionally, the image's log total flux
(:class:`~protolib.images.ImagePreprocessing`); the decoder rebuilds both, so the latent has to keep
the brightness that per-image stretching removes. Depth, width and latent size are configurable; the
defaults train on 2 CPU cores in a few minutes on the book's bank.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .distributed import global_mean_weight, idle_output, start
from .images import AugmentationConfig, ImagePreprocessing, augment_images
from .runtime import ProtolibInputError, default_device
from .splits import Split
from .training import (
    ImageSource,
    TrainingConfig,
    checkpoint_part,
    fit,
    load_checkpoint,
    network_from_checkpoint,
    system_batches,
)

__all__ = [
    "AutoencoderConfig",
    "Encoder",
    "Decoder",
    "Autoencoder",
    "AutoencoderModel",
    "train_autoencoder",
    "load_autoencoder",
    "latent_probe",
    "probe_parameters",
    "principal_components",
    "describe_network",
]


# the most feature maps, latent or embedding entries a layer may have (a crafted file could ask for terabytes)
MAX_WIDTH = 16384


@dataclass
class AutoencoderConfig:
    """Shape of the autoencoder; stored in its checkpoint (and the Siamese network's)."""

    image_size: int = 64  # side of the input images in pixels (taken from the bank)
    # feature maps per level; each level halves the image
    channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    latent_size: int = 32  # length of the latent vector
    convs_per_level: int = 1  # convolutions per level (more: deeper and slower)
    use_flux: bool = True  # give the encoder the log total flux and make the decoder rebuild it
    flux_weight: float = 0.1  # weight of the flux error in the loss, beside the pixel error

    def __post_init__(self):
        self.channels = [int(c) for c in self.channels]
        sizes = {
            "latent_size": self.latent_size,
            "convs_per_level": self.convs_per_level,
            **{f"channels[{i}]": c for i, c in enumerate(self.channels)},
        }
        for name, value in sizes.items():
            if not 1 <= int(value) <= MAX_WIDTH:
                raise ProtolibInputError(f"The autoencoder's {name} must be between 1 and {MAX_WIDTH}, got {value}.")
        if not (math.isfinite(self.flux_weight) and self.flux_weight >= 0):
            raise ProtolibInputError(f"The autoencoder's flux_weight must be a number >= 0, got {self.flux_weight}.")
        if not self.channels or self.image_size % 2 ** len(self.channels):
            raise ProtolibInputError(
                f"Images of {self.image_size} px cannot be halved {len(self.channels)} times (channels "
                f"{self.channels}); "
                "use fewer levels or an image size divisible by 2**levels."
            )

    def to_dict(self) -> dict:
        return asdict(self)


def _activation() -> nn.Module:
    return nn.SiLU()


class Encoder(nn.Module):
    """Image ``(N, 1, H, W)`` and log flux ``(N, 1)`` to a latent ``(N, latent_size)``."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        layers, previous = [], 1
        for width in config.channels:
            layers += [nn.Conv2d(previous, width, 3, stride=2, padding=1), _activation()]
            for _ in range(config.convs_per_level - 1):
                layers += [nn.Conv2d(width, width, 3, padding=1), _activation()]
            previous = width
        self.convolutions = nn.Sequential(*layers, nn.Flatten())
        side = config.image_size // 2 ** len(config.channels)
        self.use_flux = config.use_flux
        self.to_latent = nn.Linear(previous * side * side + int(config.use_flux), config.latent_size)

    def forward(self, pixels: torch.Tensor, log_flux: torch.Tensor) -> torch.Tensor:
        features = self.convolutions(pixels)  # (N, C * h * w)
        if self.use_flux:
            features = torch.cat([features, log_flux.to(features.dtype)], 1)  # (N, C * h * w + 1)
        return self.to_latent(features)  # (N, latent)


class Decoder(nn.Module):
    """Latent ``(N, latent_size)`` to an image ``(N, 1, H, W)`` and a log flux ``(N, 1)``."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.side = config.image_size // 2 ** len(config.channels)
        self.width = config.channels[-1]
        self.from_latent = nn.Sequential(nn.Linear(config.latent_size, self.width * self.side**2), _activation())
        layers, widths = [], list(reversed(config.channels))
        for width, following in zip(widths, widths[1:] + [widths[-1]]):
            layers += [nn.ConvTranspose2d(width, following, 4, stride=2, padding=1), _activation()]
            for _ in range(config.convs_per_level - 1):
                layers += [nn.Conv2d(following, following, 3, padding=1), _activation()]
        self.upsample = nn.Sequential(*layers, nn.Conv2d(widths[-1], 1, 3, padding=1))
        self.flux = nn.Linear(config.latent_size, 1)

    def forward(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid = self.from_latent(latent).reshape(len(latent), self.width, self.side, self.side)  # (N, C, h, w)
        return self.upsample(grid), self.flux(latent)  # (N, 1, H, W), (N, 1)


class Autoencoder(nn.Module):
    """Encoder and decoder together: ``forward`` returns the rebuilt image, rebuilt flux and latent."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def forward(self, pixels: torch.Tensor, log_flux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latent = self.encoder(pixels, log_flux)  # (N, latent)
        image, flux = self.decoder(latent)  # (N, 1, H, W), (N, 1)
        return image, flux, latent

    def loss(self, pixels: torch.Tensor, log_flux: torch.Tensor) -> torch.Tensor:
        """Mean-squared error of the rebuilt pixels, plus the weighted flux error when the flux is used."""
        image, flux, _ = self(pixels, log_flux)
        loss = ((image.float() - pixels) ** 2).mean()
        if self.config.use_flux:
            loss = loss + self.config.flux_weight * ((flux.float() - log_flux) ** 2).mean()
        return loss


class BankImages:
    """Training and validation batches of one bank split, with the augmentation for training."""

    def __init__(
        self, bank, split: Split, training: TrainingConfig, augmentation: AugmentationConfig, device: torch.device
    ):
        self.source = ImageSource(bank, training.memory_limit_mb)
        self.split, self.training, self.augmentation, self.device = split, training, augmentation, device
        self.beam = bank.instrument.beam
        self.pixel_arcsec = bank.pixel_size_au / bank.instrument.distance_pc
        self.noise_rms = bank.instrument.noise_rms_jy_beam

    def batches(self, systems: np.ndarray, epoch: int, shuffle: bool = True):
        t = self.training
        return system_batches(
            self.source,
            systems,
            batch_systems=t.batch_systems,
            projections_per_system=t.projections_per_system,
            chunk_systems=t.chunk_systems,
            seed=t.seed,
            epoch=epoch,
            shuffle=shuffle,
        )

    def to_device(self, images: np.ndarray, generator: torch.Generator | None) -> torch.Tensor:
        """Images ``(B, H, W)`` as a tensor on the device, augmented when ``generator`` is given."""
        tensor = torch.from_numpy(np.ascontiguousarray(images)).to(self.device, non_blocking=True)
        if generator is None or not self.augmentation.enabled:
            return tensor
        return augment_images(
            tensor,
            self.augmentation,
            generator,
            beam=self.beam,
            pixel_arcsec=self.pixel_arcsec,
            noise_rms=self.noise_rms,
        )


class _AutoencoderTask:
    def __init__(self, model: Autoencoder, data: BankImages, preprocessing: ImagePreprocessing, metadata: dict):
        self.model, self.data, self.preprocessing, self._metadata = model, data, preprocessing, metadata
        self.device = data.device

    def training_batches(self, epoch):
        return self.data.batches(self.data.split.train, epoch)

    def validation_batches(self):
        return self.data.batches(self.data.split.validation, 0, shuffle=False)

    def loss(self, batch, generator):
        weight = global_mean_weight(len(batch[0]), self.device)
        if len(batch[0]) == 0:
            return idle_output(self.model, (), self.device)
        pixels, log_flux = self.preprocessing(self.data.to_device(batch[0], generator))
        return self.model.loss(pixels, log_flux) * weight

    def metadata(self):
        return self._metadata


def train_autoencoder(
    bank,
    out: str | Path,
    *,
    split: Split,
    model: AutoencoderConfig | None = None,
    images: dict | None = None,
    augmentation: AugmentationConfig | None = None,
    training: TrainingConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> Path:
    """Train an autoencoder on ``bank``'s training systems and write its checkpoint to ``out``.

    Arguments:
        bank: an open :class:`~protolib.bank.Bank`.
        out: the checkpoint file (``RUN/autoencoder.pt``).
        split: systems for training and validation (test systems are never read).
        model: architecture (``image_size`` is set from the bank).
        images: settings of :class:`~protolib.images.ImagePreprocessing` (``stretch``, ...).
        augmentation: training augmentation.
        training: the engine's settings.
        resume: continue an interrupted run in ``out``.
        progress: show progress bars.
        device: where to train (default: CUDA when present).

    Returns:
        ``out``.
    """
    training = training or TrainingConfig()
    augmentation = augmentation or AugmentationConfig()
    model_config = AutoencoderConfig(**{**(model.to_dict() if model else {}), "image_size": bank.image_size})
    device = start(default_device(device))
    preprocessing = ImagePreprocessing.from_bank(bank, **(images or {}))
    # at most ~1000 systems: enough for a mean and spread
    flux_systems = split.train[:: max(1, len(split.train) // 1000)]
    preprocessing.fit(bank.load_images(flux_systems).reshape(-1, bank.image_size, bank.image_size))
    torch.manual_seed(training.seed)
    network = Autoencoder(model_config).to(device)
    metadata = {
        "kind": "autoencoder",
        "config": {
            "model": model_config.to_dict(),
            "augmentation": augmentation.to_dict(),
            "training": training.to_dict(),
        },
        "preprocessing": preprocessing.to_dict(),
        "bank": bank.identity,
        "setup": bank.setup,
        "image_size": bank.image_size,
        "split": split.to_dict(),
    }
    task = _AutoencoderTask(network, BankImages(bank, split, training, augmentation, device), preprocessing, metadata)
    fit(task, training, out, resume=resume, progress=progress)
    return Path(out)


class AutoencoderModel:
    """A trained autoencoder ready to use on images in the bank's unit (eval mode, no gradients).

    Example:
        >>> ae = load_autoencoder("RUN/autoencoder.pt")      # doctest: +SKIP
        >>> latents = ae.encode_images(images)                # (N, latent_size)
    """

    def __init__(self, network: Autoencoder, preprocessing: ImagePreprocessing, checkpoint: dict, device: torch.device):
        self.network, self.preprocessing, self.checkpoint, self.device = (
            network.eval(),
            preprocessing,
            checkpoint,
            device,
        )

    @property
    def history(self) -> list[dict]:
        return self.checkpoint["history"]

    def _run(self, images: np.ndarray, batch_size: int):
        outputs = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                chunk = torch.as_tensor(
                    np.ascontiguousarray(images[start : start + batch_size]), dtype=torch.float32, device=self.device
                )
                pixels, flux = self.preprocessing(chunk)
                outputs.append((pixels, *self.network(pixels, flux)))
        return [torch.cat(parts).cpu().numpy() for parts in zip(*outputs)]

    def encode_images(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Latent vectors ``(N, latent_size)`` of images ``(N, H, W)``."""
        return self._run(images, batch_size)[3]

    def reconstruct(self, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Stretched inputs and their reconstructions, both ``(N, H, W)``."""
        pixels, rebuilt, _, _ = self._run(images, batch_size)
        return pixels[:, 0], rebuilt[:, 0]


def load_autoencoder(path: str | Path, device: str | torch.device | None = None) -> AutoencoderModel:
    """Rebuild a trained autoencoder from its checkpoint alone."""
    checkpoint = load_checkpoint(path, "autoencoder")
    device = default_device(device)
    network = network_from_checkpoint(
        lambda: Autoencoder(AutoencoderConfig(**checkpoint["config"]["model"])), checkpoint, path
    )
    preprocessing = checkpoint_part(
        path, "image preprocessing", lambda: ImagePreprocessing.from_dict(checkpoint["preprocessing"])
    )
    return AutoencoderModel(network.to(device), preprocessing, checkpoint, device)


def latent_probe(
    train_latents: np.ndarray,
    train_values: np.ndarray,
    test_latents: np.ndarray,
    test_values: np.ndarray,
    ridge: float = 1e-3,
) -> np.ndarray:
    """How much of each parameter a linear read-out of the latent recovers on held-out systems.

    Fits ridge regression from latents ``(N, L)`` to normalised parameters ``(N, K)`` on training
    images and returns the coefficient of determination R^2 ``(K,)`` on test images (1: perfect,
    0: no better than the mean).
    """
    mean, std = train_latents.mean(0), train_latents.std(0) + 1e-8
    x = np.c_[(train_latents - mean) / std, np.ones(len(train_latents))]
    coef = np.linalg.solve(x.T @ x + ridge * len(x) * np.eye(x.shape[1]), x.T @ train_values)
    predicted = np.c_[(test_latents - mean) / std, np.ones(len(test_latents))] @ coef
    residual = ((test_values - predicted) ** 2).sum(0)
    return 1.0 - residual / ((test_values - test_values.mean(0)) ** 2).sum(0)


def probe_parameters(model: AutoencoderModel, bank, split: Split, names: list[str]) -> dict[str, float]:
    """R^2 of a linear read-out of each parameter from the latent, fit on training and scored on test systems.

    Parameters are log10 where log-scaled, z-scored on the training systems (:func:`latent_probe`).
    """
    from .normalise import ParameterNormaliser

    table = bank.parameter_table(names)
    normaliser = ParameterNormaliser(names).fit(table[split.train])
    n_proj, size = bank.n_projections, bank.image_size
    parts = {}
    for part in ("train", "test"):
        systems = getattr(split, part)
        parts[part] = (
            model.encode_images(bank.load_images(systems).reshape(-1, size, size)),
            normaliser.transform(np.repeat(table[systems], n_proj, axis=0)),
        )
    return dict(zip(names, latent_probe(*parts["train"], *parts["test"]).tolist()))


def principal_components(values: np.ndarray, n: int = 2) -> np.ndarray:
    """The first ``n`` principal components of ``values`` ``(N, L)``: ``(N, n)``."""
    centred = values - values.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:n].T


def describe_network(network: nn.Module, image_size: int | None = None) -> str:
    """A table of a network's blocks, to read beside ``print(network)``: layers, output shapes and parameters.

    The blocks are the network's parts one level down (``encoder.convolutions``, ``encoder.to_latent``,
    ``decoder.upsample``, ``head``...). With ``image_size``, one blank image ``(1, 1, H, W)`` and a log
    flux of 0 go through the network to read the output shape (without the batch axis) of each layer
    that changes it. Works for the autoencoder and the Siamese network (both take pixels and a log flux).

    Example:
        >>> print(describe_network(load_autoencoder("RUN/autoencoder.pt").network, 64))   # doctest: +SKIP
    """
    blocks = []
    for name, child in network.named_children():
        inner = list(child.named_children())
        blocks += (
            [(name, child)]
            if isinstance(child, nn.Sequential) or not inner
            else [(f"{name}.{sub}", part) for sub, part in inner]
        )
    shapes = _layer_output_shapes(network, image_size) if image_size else {}
    rows = [("block", "layers", "output shapes (one image)", "parameters")]
    for name, block in blocks:
        layers = list(block) if isinstance(block, nn.Sequential) else [block]
        # activations: see print(network)
        words = [type(layer).__name__ for layer in layers if not isinstance(layer, nn.SiLU)]
        words = [f"{words.count(w)} x {w}" if words.count(w) > 1 else w for w in dict.fromkeys(words)]
        count = sum(p.numel() for p in block.parameters())
        frozen = " (frozen)" if count and not any(p.requires_grad for p in block.parameters()) else ""
        outputs = ["x".join(map(str, shapes[id(layer)])) for layer in layers if id(layer) in shapes]
        # a level's repeated shape once
        outputs = ", ".join(o for k, o in enumerate(outputs) if not k or o != outputs[k - 1])
        rows.append((name, ", ".join(words), outputs or "-", f"{count:,d}{frozen}"))
    total = sum(p.numel() for p in network.parameters())
    trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
    rows.append(("total", "", "", f"{total:,d}" + ("" if trainable == total else f" ({trainable:,d} trained)")))
    widths = [max(len(row[k]) for row in rows) for k in range(4)]
    lines = [f"{a:{widths[0]}s}  {b:{widths[1]}s}  {c:{widths[2]}s}  {d:>{widths[3]}s}" for a, b, c, d in rows]
    rule = "-" * len(lines[0])
    return "\n".join([lines[0], rule, *lines[1:-1], rule, lines[-1]])


def _layer_output_shapes(network: nn.Module, image_size: int) -> dict[int, tuple[int, ...]]:
    """``{id(layer): output shape}`` of every layer with weights, or that flattens, for one blank image."""
    shapes, parameter = {}, next(network.parameters())
    layers = [
        m
        for m in network.modules()
        if isinstance(m, nn.Flatten) or (not list(m.children()) and any(True for _ in m.parameters()))
    ]
    hooks = [
        m.register_forward_hook(lambda module, inputs, output: shapes.__setitem__(id(module), tuple(output.shape[1:])))
        for m in layers
    ]
    try:
        with torch.no_grad():
            network(
                torch.zeros(1, 1, image_size, image_size, device=parameter.device),
                torch.zeros(1, 1, device=parameter.device),
            )
    finally:
        for hook in hooks:
            hook.remove()
    return shapes
