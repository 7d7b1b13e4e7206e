"""The Siamese network trained by weakly supervised metric learning (pipeline step 2).

Two weight-sharing branches (in practice one network applied to every image) built on the
pretrained encoder, frozen or fine-tuned, with a projection head to a unit-length embedding. The
predicted similarity of two images is the cosine of their embeddings; training makes it reproduce a
target similarity computed from the two systems' physical parameters (:mod:`protolib.target_similarity`).

By default every pair within a batch is used (``B`` images give ``B (B - 1) / 2`` pairs for ``B``
forward passes, projections of one system being natural positives); ``pairs.mode = "fixed"`` is the
thesis's scheme of a fixed random fraction of all pairs, two forward passes per pair.

Under ``torchrun`` each process embeds its share of a batch's systems and the embeddings are gathered
(with gradients) before the pairs are formed, so the pairs, the loss and the gradient are those of
the whole batch in one process; in fixed mode each process takes a share of the batch's pairs.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .autoencoder import AutoencoderConfig, BankImages, Encoder, load_autoencoder
from .band_siamese import (
    BAND_CHOICES,
    DEFAULT_BAND_KEEP,
    DEFAULT_REFERENCE_ALONE,
    BandBankImages,
    BandDropout,
    BandPreprocessing,
    band_positions,
    load_widened_encoder,
    widen_encoder,
)
from .distributed import gather_rows, global_mean_weight, idle_output, shard, start
from .images import AugmentationConfig, ImagePreprocessing
from .losses import make_loss
from .normalise import ParameterNormaliser
from .pairs import all_pairs, sample_fixed_pairs
from .runtime import ProtolibInputError, atomic_path, default_device
from .splits import Split
from .target_similarity import TargetDefinition, pairwise_target_similarity, target_similarity
from .training import TrainingConfig, checkpoint_part, fit, load_checkpoint, network_from_checkpoint

__all__ = [
    "SiameseConfig",
    "LossConfig",
    "PairConfig",
    "SiameseNetwork",
    "SiameseModel",
    "train_siamese",
    "load_siamese",
    "load_siamese_with_its_bank",
    "evaluate_similarity",
    "similarity_metrics",
    "neighbour_parameter_error",
    "metrics_path",
]


@dataclass
class SiameseConfig:
    """Shape of the Siamese branches; stored in the checkpoint."""

    embedding_size: int = 32  # length of the unit embedding vectors
    hidden_size: int = 128  # width of the projection head's hidden layer
    freeze_encoder: bool = False  # keep the pretrained encoder fixed (True) or fine-tune it (False)
    # a bank of several bands: null (or "reference") embeds its reference band only, as one-band networks do; "all"
    # embeds any subset of its bands, trained with bands dropped at random (protolib.band_siamese)
    bands: str | None = None
    band_keep: float | None = None  # "all": chance that each band is kept in a training image (null: 0.5)
    reference_alone: float | None = None  # "all": share of training images in the reference band alone (null: 0.25)

    def __post_init__(self):
        from .autoencoder import MAX_WIDTH

        self._check_bands()
        for name in ("embedding_size", "hidden_size"):
            if not 1 <= int(getattr(self, name)) <= MAX_WIDTH:
                raise ProtolibInputError(
                    f"The Siamese network's {name} must be between 1 and {MAX_WIDTH}, got {getattr(self, name)}."
                )

    def _check_bands(self) -> None:
        """``bands`` one of :data:`~protolib.band_siamese.BAND_CHOICES` (``"reference"`` stored as ``None``, the
        default, so that a configuration naming it matches checkpoints written before bands); the dropout chances
        between 0 and 1."""
        if self.bands not in BAND_CHOICES:
            raise ProtolibInputError(f"The Siamese network's bands must be 'reference' or 'all', got {self.bands!r}.")
        if self.bands == "reference":
            self.bands = None
        for name in ("band_keep", "reference_alone"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise ProtolibInputError(f"The Siamese network's {name} must be between 0 and 1, got {value!r}.")
        if self.band_keep is not None and self.band_keep == 0 and self.reference_alone != 1:
            raise ProtolibInputError("The Siamese network's band_keep must be above 0 (a band is kept at that chance).")

    def __repr__(self) -> str:
        """The settings, the band settings only when set (as :meth:`to_dict` stores them)."""
        return f"SiameseConfig({', '.join(f'{k}={v!r}' for k, v in self.to_dict().items())})"

    @property
    def all_bands(self) -> bool:
        """Whether the network embeds any subset of a bank's bands (band dropout)."""
        return self.bands == "all"

    def dropout(self, n_bands: int, reference: int) -> BandDropout:
        """The band dropout of a network on ``n_bands`` bands whose reference band is ``reference``."""
        keep = DEFAULT_BAND_KEEP if self.band_keep is None else float(self.band_keep)
        alone = DEFAULT_REFERENCE_ALONE if self.reference_alone is None else float(self.reference_alone)
        return BandDropout(n_bands, reference, keep, alone)

    def to_dict(self) -> dict:
        """The settings as a checkpoint stores them: the band settings only when set, so that a one-band network's
        checkpoint is what it was before bands."""
        data = asdict(self)
        for name in ("bands", "band_keep", "reference_alone"):
            if data[name] is None:
                del data[name]
        return data


@dataclass
class LossConfig:
    """Which metric-learning loss, with its options."""

    kind: str = "mse"  # "mse" on the similarity, "contrastive" (thesis) or "log_ratio" (Kim et al. 2019)
    margin: float = 0.5  # contrastive: distance beyond which dissimilar pairs cost nothing
    epsilon: float = 1e-3  # log-ratio: keeps logarithms of zero distances finite

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PairConfig:
    """Which pairs a training step compares."""

    mode: str = "all"  # "all": every pair within a batch; "fixed": the thesis's fixed random pairs
    # fixed mode: fraction of all pairs of training images drawn once (each epoch visits all)
    fixed_fraction: float = 0.001

    def __post_init__(self):
        if self.mode not in ("all", "fixed"):
            raise ProtolibInputError(f"Pair mode must be 'all' or 'fixed', got {self.mode!r}.")

    def to_dict(self) -> dict:
        return asdict(self)


class SiameseNetwork(nn.Module):
    """Encoder plus projection head: images ``(N, 1, H, W)`` and log flux ``(N, 1)`` to unit embeddings ``(N, D)``.

    With ``config.bands == "all"`` and ``n_bands`` bands, the encoder takes ``(N, 2 n_bands, H, W)`` and ``(N, 2
    n_bands)`` (:class:`~protolib.band_siamese.BandPreprocessing`, :func:`~protolib.band_siamese.widen_encoder`).
    """

    def __init__(self, autoencoder: AutoencoderConfig, config: SiameseConfig, n_bands: int = 1):
        super().__init__()
        self.encoder = Encoder(autoencoder)
        if config.all_bands:
            widen_encoder(self.encoder, n_bands)
        self.head = nn.Sequential(
            nn.Linear(autoencoder.latent_size, config.hidden_size),
            nn.SiLU(),
            nn.Linear(config.hidden_size, config.embedding_size),
        )
        self.encoder.requires_grad_(not config.freeze_encoder)

    def forward(self, pixels: torch.Tensor, log_flux: torch.Tensor) -> torch.Tensor:
        latent = self.encoder(pixels, log_flux)  # (N, latent)
        return F.normalize(self.head(latent).float(), dim=1)  # (N, D)


class _SiameseTask:
    def __init__(
        self,
        network,
        data: BankImages,
        preprocessing,
        parameters: torch.Tensor,
        target: TargetDefinition,
        loss,
        pairs: PairConfig,
        metadata,
        dropout: BandDropout | None = None,
    ):
        self.dropout = dropout  # a network of several bands: which bands each image keeps
        self.model, self.data, self.preprocessing, self.target, self.loss_fn = (
            network,
            data,
            preprocessing,
            target,
            loss,
        )
        self.parameters, self.pairs, self._metadata, self.device = parameters, pairs, metadata, data.device
        if pairs.mode == "fixed":
            if getattr(loss, "takes_matrices", False):
                raise ProtolibInputError(
                    "The log-ratio loss compares pairs sharing an anchor; use it with pairs.mode = 'all'."
                )
            n_proj = data.source.bank.n_projections
            self.fixed = sample_fixed_pairs(len(data.split.train) * n_proj, pairs.fixed_fraction, data.training.seed)
            self.n_proj = n_proj

    def _embed(self, images, generator):
        if len(images) == 0:
            return idle_output(self.model, (0, self.model.head[-1].out_features), self.device)
        if self.dropout is not None:
            present = self.dropout.draw(len(images), generator)
            return self.model(*self.preprocessing(self.data.to_device(images, generator), present))
        return self.model(*self.preprocessing(self.data.to_device(images, generator)))

    def training_batches(self, epoch):
        if self.pairs.mode == "all":
            return self.data.batches(self.data.split.train, epoch)
        return self._fixed_batches(epoch)

    def _fixed_batches(self, epoch):
        t = self.data.training
        per_batch = max(1, t.batch_systems * (t.projections_per_system or self.n_proj) // 2)
        order = np.random.default_rng([t.seed, epoch, 5]).permutation(len(self.fixed))
        systems = self.data.split.train
        for first in range(0, len(order), per_batch):
            pairs = self.fixed[order[first : first + per_batch]]
            sys_a, sys_b = systems[pairs[:, 0] // self.n_proj], systems[pairs[:, 1] // self.n_proj]
            wanted = np.unique(np.r_[sys_a, sys_b])
            block = self.data.source.systems(wanted)
            row = {s: k for k, s in enumerate(wanted)}
            images_a = block[[row[s] for s in sys_a], pairs[:, 0] % self.n_proj]
            images_b = block[[row[s] for s in sys_b], pairs[:, 1] % self.n_proj]
            mine = shard(len(pairs))
            yield images_a[mine], sys_a[mine], images_b[mine], sys_b[mine]

    def validation_batches(self):
        return self.data.batches(self.data.split.validation, 0, shuffle=False)

    def loss(self, batch, generator):
        if len(batch) == 4:
            embed_a, embed_b = self._embed(batch[0], generator), self._embed(batch[2], generator)  # (M, D) each
            target = target_similarity(self.parameters[batch[1]], self.parameters[batch[3]], self.target)
            weight = global_mean_weight(len(embed_a), self.device)
            if len(embed_a) == 0:
                return idle_output(self.model, (), self.device)
            return self.loss_fn((embed_a * embed_b).sum(1), target.float()) * weight
        # (B, D): every rank's share, in one process the batch
        embeddings = gather_rows(self._embed(batch[0], generator))
        systems = gather_rows(torch.as_tensor(batch[1], device=self.parameters.device))  # (B,)
        similarity = (embeddings[:, None, :] * embeddings[None, :, :]).sum(-1)  # (B, B), float32 even under autocast
        target = pairwise_target_similarity(self.parameters[systems], self.target).float()  # (B, B)
        if getattr(self.loss_fn, "takes_matrices", False):
            return self.loss_fn(similarity, target)
        i, j = all_pairs(len(embeddings), similarity.device)
        return self.loss_fn(similarity[i, j], target[i, j])

    def metadata(self):
        return self._metadata


def train_siamese(
    bank,
    autoencoder: str | Path,
    out: str | Path,
    *,
    model: SiameseConfig | None = None,
    target: TargetDefinition | None = None,
    loss: LossConfig | None = None,
    pairs: PairConfig | None = None,
    augmentation: AugmentationConfig | None = None,
    training: TrainingConfig | None = None,
    split: Split | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    on_epoch: Callable[[dict, SiameseModel], None] | None = None,
    test_metrics: bool = True,
) -> Path:
    """Train a Siamese network on ``bank`` from a pretrained autoencoder; write checkpoint and metrics.

    Writes ``out`` (e.g. ``RUN/siamese.pt``) and, beside it, ``metrics.json`` (:func:`metrics_path`) with the held-out
    (test systems) ``spearman``, ``mse`` and ``within_0.1`` of predicted against target similarity.

    Arguments:
        bank: an open :class:`~protolib.bank.Bank`.
        autoencoder: the autoencoder checkpoint whose encoder (and image preprocessing) is reused.
        out: the checkpoint file.
        model, target, loss, pairs, augmentation, training: the stage's settings (defaults when ``None``).
        split: systems for training, validation and test (default: the autoencoder's split).
        resume: continue an interrupted run in ``out``.
        progress: show progress bars.
        device: where to train (default: CUDA when present).
        on_epoch: called after every epoch with its history record and a :class:`SiameseModel` of the
            network as it is then (see :func:`~protolib.training.fit`); ``protolib tune`` scores and prunes trials with
            it.
        test_metrics: write the held-out (test systems) metrics beside the checkpoint; ``protolib tune`` does not,
            so that a search never looks at the test systems.

    Returns:
        ``out``.
    """
    model, target, loss = model or SiameseConfig(), target or TargetDefinition(), loss or LossConfig()
    pairs, augmentation, training = (
        pairs or PairConfig(),
        augmentation or AugmentationConfig(),
        training or TrainingConfig(),
    )
    device = start(default_device(device))
    pretrained = _pretrained_for(bank, autoencoder)
    split = split or Split.from_dict(pretrained.checkpoint["split"])
    settings = {"model": model, "loss": loss, "pairs": pairs, "augmentation": augmentation, "training": training}
    task = _siamese_task(bank, pretrained, autoencoder, settings, target, split, device)
    # the test metrics are written before the new model replaces the old one, so the two always agree
    write_metrics = functools.partial(
        _write_test_metrics, bank=bank, split=split, settings=settings, target=target, out=out, device=device
    )
    hook = None if on_epoch is None else _with_model(on_epoch, task, pretrained)
    finish = write_metrics if test_metrics else None
    fit(task, training, out, resume=resume, progress=progress, on_epoch=hook, before_finish=finish)
    return Path(out)


def _pretrained_for(bank, autoencoder: str | Path):
    """The pretrained autoencoder (on the CPU), refused when it was trained on images of another size than
    ``bank``'s."""
    pretrained = load_autoencoder(autoencoder, "cpu")
    if pretrained.checkpoint["image_size"] != bank.image_size:
        raise ProtolibInputError(
            f"Autoencoder {autoencoder} was trained on {pretrained.checkpoint['image_size']} px images; bank "
            f"{bank.path} has {bank.image_size} px."
        )
    return pretrained


def _siamese_task(
    bank, pretrained, autoencoder: str | Path, settings: dict, target: TargetDefinition, split: Split, device
) -> _SiameseTask:
    """What :func:`~protolib.training.fit` trains: a new network on the pretrained encoder, the training systems'
    normalised targets, the bank's batches, the loss and pairs, and the checkpoint's metadata."""
    normaliser = ParameterNormaliser.fit_on_systems(target.parameters, target.normalisation, bank, split.train)
    parameters = torch.as_tensor(
        normaliser.transform(bank.parameter_table(target.parameters)), dtype=torch.float32, device=device
    )
    bands = _band_preprocessing(bank, pretrained, settings["model"], split)
    ae_config, network = _network_on_pretrained_encoder(pretrained, settings["model"], settings["training"].seed, bands)
    metadata = _checkpoint_metadata(bank, pretrained, autoencoder, ae_config, settings, target, normaliser, split)
    data_kind = BankImages if bands is None else BandBankImages
    data = data_kind(bank, split, settings["training"], settings["augmentation"], device)
    if bands is not None:
        metadata["bands"] = bands.to_dict()
    return _SiameseTask(
        network.to(device),
        data,
        pretrained.preprocessing if bands is None else bands,
        parameters,
        target,
        make_loss(**settings["loss"].to_dict()),
        settings["pairs"],
        metadata,
        None if bands is None else settings["model"].dropout(bands.n_bands, bands.reference),
    )


def _band_preprocessing(bank, pretrained, model: SiameseConfig, split: Split) -> BandPreprocessing | None:
    """The preprocessing of every band of ``bank`` for a network of all bands (``None`` for a one-band network);
    refused in one line on a bank of one band, or on one opened as one of its bands."""
    if not model.all_bands:
        return None
    if bank.n_bands < 2:
        raise ProtolibInputError(
            f"siamese.model.bands: all trains on every band of a bank of several bands; bank {bank.path} "
            f"{'was opened as one band' if bank.band_index is not None else 'has one band'}. Open it whole, make one "
            "with simulator.frequencies_ghz, or leave bands unset."
        )
    return BandPreprocessing.fit_on_bank(bank, split.train, pretrained.preprocessing)


def _with_model(on_epoch: Callable[[dict, SiameseModel], None], task: _SiameseTask, pretrained):
    """``on_epoch`` as :func:`~protolib.training.fit` calls it: with the epoch's record and a
    :class:`SiameseModel` of the network as it is then."""

    def callback(record):
        on_epoch(record, SiameseModel(task.model, task.preprocessing, task.metadata(), task.device))

    return callback


def _network_on_pretrained_encoder(
    pretrained, model: SiameseConfig, seed: int, bands: BandPreprocessing | None = None
) -> tuple[AutoencoderConfig, SiameseNetwork]:
    """A new Siamese network (its head initialised with ``seed``) on a copy of the pretrained autoencoder's encoder,
    widened to ``bands`` for a network of several bands (:func:`~protolib.band_siamese.load_widened_encoder`)."""
    ae_config = AutoencoderConfig(**pretrained.checkpoint["config"]["model"])
    torch.manual_seed(seed)
    if bands is None:
        network = SiameseNetwork(ae_config, model)
        network.encoder.load_state_dict(pretrained.network.encoder.state_dict())
        return ae_config, network
    network = SiameseNetwork(ae_config, model, bands.n_bands)
    load_widened_encoder(network.encoder, pretrained.network.encoder, bands.reference, bands.n_bands)
    return ae_config, network


def _write_test_metrics(
    finished: Path, *, bank, split: Split, settings: dict, target: TargetDefinition, out, device
) -> None:
    """The held-out metrics of the finished checkpoint ``finished``, written to :func:`metrics_path` of ``out``."""
    trained = load_siamese(finished, device)
    metrics = evaluate_similarity(trained, bank, split.test)["metrics"]
    metrics.update(
        systems=len(split.test),
        target=target.kind,
        loss=settings["loss"].kind,
        pair_mode=settings["pairs"].mode,
        best_epoch=trained.checkpoint["best_epoch"],
    )
    with atomic_path(metrics_path(out)) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2))


def _checkpoint_metadata(
    bank,
    pretrained,
    autoencoder,
    ae_config: AutoencoderConfig,
    settings: dict,
    target: TargetDefinition,
    normaliser: ParameterNormaliser,
    split: Split,
) -> dict:
    """What a Siamese checkpoint says about itself: its settings, preprocessing, normaliser, bank, split and encoder."""
    return {
        "kind": "siamese",
        "config": {"autoencoder": ae_config.to_dict(), **{name: value.to_dict() for name, value in settings.items()}},
        "preprocessing": pretrained.preprocessing.to_dict(),
        "normaliser": normaliser.to_dict(),
        "parameter_names": list(target.parameters),
        "target": target.to_dict(),
        "bank": bank.identity,
        "setup": bank.setup,
        "image_size": bank.image_size,
        "split": split.to_dict(),
        "autoencoder": str(Path(autoencoder).resolve()),
    }


def metrics_path(checkpoint: str | Path) -> Path:
    """Where the held-out metrics of a Siamese checkpoint go: ``metrics.json`` beside ``siamese.pt``, else
    ``<stem>_metrics.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name("metrics.json" if checkpoint.stem == "siamese" else f"{checkpoint.stem}_metrics.json")


class SiameseModel:
    """A trained Siamese network for inference: embeds images in the bank's unit under eval/no_grad.

    Example:
        >>> model = load_siamese("RUN/siamese.pt")          # doctest: +SKIP
        >>> emb = model.embed_images(images)                # (N, D) float32, unit length
        >>> model.similarity(images_a, images_b)            # (N,) cosine similarities
        >>> model.embed_bands(b3_b6, [100, 230])            # (N, D): images (N, 2, H, W) of two bands

    A network of several bands (``siamese.model.bands: all``) has a :class:`~protolib.band_siamese.BandPreprocessing`
    as ``preprocessing``; :meth:`embed_images` then takes images of its reference band ``(N, H, W)`` or of all its
    bands ``(N, bands, H, W)``, and :meth:`embed_bands` any subset.
    """

    def __init__(
        self,
        network: SiameseNetwork,
        preprocessing: ImagePreprocessing | BandPreprocessing,
        checkpoint: dict,
        device: torch.device,
    ):
        self.network, self.preprocessing, self.checkpoint, self.device = (
            network.eval(),
            preprocessing,
            checkpoint,
            device,
        )
        self.normaliser = ParameterNormaliser.from_dict(checkpoint["normaliser"])
        self.target = TargetDefinition.from_dict(checkpoint["target"])

    @property
    def history(self) -> list[dict]:
        return self.checkpoint["history"]

    @property
    def split(self) -> Split:
        return Split.from_dict(self.checkpoint["split"])

    @property
    def frequencies_ghz(self) -> list[float]:
        """The bands the network embeds [GHz]: a network of several bands its bank's, else its one band."""
        if isinstance(self.preprocessing, BandPreprocessing):
            return list(self.preprocessing.frequencies_ghz)
        return [float(self.checkpoint.get("setup", {}).get("frequency_ghz", float("nan")))]

    def embed_images(self, images: np.ndarray, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        """Unit-length embeddings ``(N, D)`` float32 of images ``(N, H, W)`` in the bank's unit (a network of several
        bands: of its reference band, or ``(N, bands, H, W)`` in all its bands)."""
        images = np.ascontiguousarray(images)
        size = (self.checkpoint["image_size"],) * 2
        bands = isinstance(self.preprocessing, BandPreprocessing)
        if bands and images.ndim == 4 and images.shape[1:] == (self.preprocessing.n_bands, *size):
            return self._embed(images, np.ones(self.preprocessing.n_bands, dtype=bool), batch_size, progress)
        if images.ndim != 3 or images.shape[1:] != size:
            raise ProtolibInputError(f"Expected images of shape (N, {size[0]}, {size[1]}), got {images.shape}.")
        if bands:
            return self.embed_bands(images[:, None], [self.frequencies_ghz[self.preprocessing.reference]], batch_size)
        return self._embed(images, None, batch_size, progress)

    def embed_bands(
        self, images: np.ndarray, frequencies_ghz, batch_size: int = 256, progress: bool = False
    ) -> np.ndarray:
        """Unit-length embeddings ``(N, D)`` float32 of one source's images in some bands: ``(N, k, H, W)`` in the
        bank's unit, band ``j`` at ``frequencies_ghz[j]`` (each within 5% of one of :attr:`frequencies_ghz`).

        A network of several bands embeds the bands given, the others marked absent; a one-band network
        embeds the image in its own band (which must be among them) and ignores the others, as it always
        did. Refused in one line: a frequency the network has no band near, two images for one band.
        """
        images = np.ascontiguousarray(images)
        size = (self.checkpoint["image_size"],) * 2
        if images.ndim != 4 or images.shape[2:] != size or images.shape[1] != len(frequencies_ghz):
            raise ProtolibInputError(
                f"Expected images of shape (N, {len(frequencies_ghz)}, {size[0]}, {size[1]}) for the bands "
                f"{list(frequencies_ghz)} GHz, got {images.shape}."
            )
        if not isinstance(self.preprocessing, BandPreprocessing):
            own = self.frequencies_ghz
            if not math.isfinite(own[0]):
                return self.embed_images(images[:, 0], batch_size, progress)  # an imported bank's: its only band
            return self.embed_images(images[:, band_positions(frequencies_ghz, own, "the images given")[0]], batch_size)
        positions = band_positions(self.frequencies_ghz, frequencies_ghz, "the network")
        full = np.zeros((len(images), self.preprocessing.n_bands, *size), dtype=np.float32)
        full[:, positions] = images
        present = np.zeros(self.preprocessing.n_bands, dtype=bool)
        present[positions] = True
        return self._embed(full, present, batch_size, progress)

    def _embed(self, images: np.ndarray, present: np.ndarray | None, batch_size: int, progress: bool) -> np.ndarray:
        """Embeddings of images ``(N, H, W)`` (one band) or ``(N, bands, H, W)`` with bands ``present`` ``(bands,)``."""
        from tqdm.auto import tqdm

        parts = []
        with torch.no_grad():
            for start in tqdm(range(0, len(images), batch_size), desc="Embedding", unit="batch", disable=not progress):
                chunk = torch.as_tensor(images[start : start + batch_size], dtype=torch.float32, device=self.device)
                if present is None:
                    parts.append(self.network(*self.preprocessing(chunk)).float().cpu())
                    continue
                mask = torch.as_tensor(present, device=self.device).expand(len(chunk), -1)
                parts.append(self.network(*self.preprocessing(chunk, mask)).float().cpu())
        out = torch.cat(parts) if parts else torch.zeros(0, self.network.head[-1].out_features)
        return F.normalize(out, dim=1).numpy().astype(np.float32)

    def similarity(self, images_a: np.ndarray, images_b: np.ndarray) -> np.ndarray:
        """Predicted similarity (cosine of embeddings) of ``images_a[k]`` and ``images_b[k]``, ``(N,)``."""
        return (self.embed_images(images_a) * self.embed_images(images_b)).sum(1)

    def target_similarity(self, table_a: np.ndarray, table_b: np.ndarray) -> np.ndarray:
        """Target similarity ``(N,)`` of systems with physical parameters ``(N, K)`` (``parameter_names`` order)."""
        return target_similarity(self.normaliser.transform(table_a), self.normaliser.transform(table_b), self.target)


def load_siamese(path: str | Path, device: str | torch.device | None = None) -> SiameseModel:
    """Rebuild a trained Siamese network from its checkpoint alone."""
    checkpoint = load_checkpoint(path, "siamese")
    device = default_device(device)
    config = checkpoint["config"]
    bands = None
    if "bands" in checkpoint:
        bands = checkpoint_part(path, "band preprocessing", lambda: BandPreprocessing.from_dict(checkpoint["bands"]))
    network = network_from_checkpoint(
        lambda: SiameseNetwork(
            AutoencoderConfig(**config["autoencoder"]),
            SiameseConfig(**config["model"]),
            1 if bands is None else bands.n_bands,
        ),
        checkpoint,
        path,
    )
    preprocessing = checkpoint_part(
        path, "image preprocessing", lambda: ImagePreprocessing.from_dict(checkpoint["preprocessing"])
    )
    if bands is not None:
        preprocessing = bands
    checkpoint_part(path, "parameter normaliser", lambda: ParameterNormaliser.from_dict(checkpoint["normaliser"]))
    checkpoint_part(path, "target definition", lambda: TargetDefinition.from_dict(checkpoint["target"]))
    return SiameseModel(network.to(device), preprocessing, checkpoint, device)


def load_siamese_with_its_bank(model_path: str | Path, bank_path: str | Path, device: str | torch.device | None = None):
    """A trained Siamese network and the bank it was trained on (whose test systems it has not seen), both opened.

    Raises:
        ProtolibInputError: the model file is missing, or the bank is not the one the model was trained on.
    """
    from .bank import Bank, check_same_setup

    model_path = Path(model_path)
    if not model_path.exists():
        raise ProtolibInputError(
            f"Model file {model_path} does not exist. Train one first with `protolib train-siamese` "
            "or by running chapter 03 (notebooks/03_siamese_wsml.ipynb)."
        )
    bank = Bank(bank_path)
    model = load_siamese(model_path, device)
    trained_on = model.checkpoint.get("bank") or {}
    if int(model.checkpoint["image_size"]) != bank.image_size:
        problem = (
            f"was trained on {model.checkpoint['image_size']} px images; bank {bank.path} has {bank.image_size} px."
        )
    elif trained_on.get("shape") != bank.identity["shape"] or trained_on.get("created") != bank.identity["created"]:
        check_same_setup(model.checkpoint, bank, model_path)  # another setup is named as such, before "another bank"
        problem = (
            f"was trained on another bank ({trained_on.get('path')}); its test systems are only held out in "
            "that bank. Use that bank."
        )
    elif not all(
        len(part) and np.all((part >= 0) & (part < bank.n_systems)) for part in (model.split.train, model.split.test)
    ):
        problem = (
            f"holds a split of systems that is empty or outside bank {bank.path}'s 0..{bank.n_systems - 1}; the "
            "file was edited."
        )
    else:
        return model, bank
    bank.close()
    raise ProtolibInputError(f"Model {model_path} {problem}")


def similarity_metrics(predicted: np.ndarray, target: np.ndarray) -> dict:
    """Spearman correlation, mean-squared error and the thesis's fraction within 0.1 of the target."""
    from scipy.stats import spearmanr  # imported here: scipy.stats costs 0.5 s in every process that reads a config

    predicted, target = np.asarray(predicted, dtype=np.float64), np.asarray(target, dtype=np.float64)
    return {
        "spearman": float(spearmanr(predicted, target).statistic)
        if np.ptp(predicted) > 0 and np.ptp(target) > 0
        else float("nan"),
        "mse": float(np.mean((predicted - target) ** 2)),
        "within_0.1": float(np.mean(np.abs(predicted - target) < 0.1)),
        "pairs": int(len(predicted)),
    }


def evaluate_similarity(model: SiameseModel, bank, systems: np.ndarray, max_systems: int = 250, seed: int = 0) -> dict:
    """Predicted and target similarity of every pair of distinct images of ``systems`` (held out).

    At most ``max_systems`` systems are used (a random subset drawn with ``seed``), which keeps the
    number of pairs, quadratic in the number of images, within memory for large banks.

    Returns:
        A dict with ``metrics`` (:func:`similarity_metrics` over all pairs, plus the same over pairs
        of different systems with suffix ``_between_systems``), ``predicted`` and ``target`` ``(M,)``,
        ``first`` and ``second`` ``(M,)`` indices into ``images`` ``(n_images, H, W)``, ``system``
        ``(n_images,)`` and ``embeddings`` ``(n_images, D)``.
    """
    systems = np.asarray(systems, dtype=np.int64)
    if len(systems) > max_systems:
        systems = np.sort(np.random.default_rng([int(seed), 13]).choice(systems, max_systems, replace=False))
    images = bank.load_images(systems)
    n_proj = images.shape[1]
    images = images.reshape(-1, *images.shape[2:])
    system = np.repeat(systems, n_proj)
    embeddings = model.embed_images(images)
    first, second = np.triu_indices(len(images), 1)
    predicted = (embeddings[first] * embeddings[second]).sum(1)
    table = bank.parameter_table(model.checkpoint["parameter_names"])[system]
    target = model.target_similarity(table[first], table[second])
    metrics = similarity_metrics(predicted, target)
    between = system[first] != system[second]
    metrics.update(
        {f"{k}_between_systems": v for k, v in similarity_metrics(predicted[between], target[between]).items()}
    )
    return {
        "metrics": metrics,
        "predicted": predicted,
        "target": target,
        "first": first,
        "second": second,
        "images": images,
        "system": system,
        "embeddings": embeddings,
    }


def neighbour_parameter_error(
    model: SiameseModel, bank, query_systems: np.ndarray, reference_systems: np.ndarray, k: int = 8
) -> dict:
    """How well nearest neighbours in embedding space recover the parameters of held-out systems.

    Each image of ``query_systems`` is matched to its ``k`` most similar images of
    ``reference_systems``; returns the root-mean-square error, per parameter in normalised units
    (a spread of the training systems), of the neighbours' mean parameters: ``{name: rmse}``.
    """
    names = model.checkpoint["parameter_names"]
    query = bank.load_images(query_systems)
    reference = bank.load_images(reference_systems)
    n_q, n_r = query.shape[1], reference.shape[1]
    eq = model.embed_images(query.reshape(-1, *query.shape[2:]))
    er = model.embed_images(reference.reshape(-1, *reference.shape[2:]))
    z_q = model.normaliser.transform(bank.parameter_table(names)[np.repeat(query_systems, n_q)])
    z_r = model.normaliser.transform(bank.parameter_table(names)[np.repeat(reference_systems, n_r)])
    nearest = np.concatenate([np.argsort(-(eq[s : s + 1024] @ er.T), axis=1)[:, :k] for s in range(0, len(eq), 1024)])
    error = np.sqrt(((z_r[nearest].mean(1) - z_q) ** 2).mean(0))
    return dict(zip(names, error.tolist()))
