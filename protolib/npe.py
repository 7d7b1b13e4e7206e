"""Neural posterior estimates: the reference that matching is measured against.

A normalising flow (a masked autoregressive flow, trained with the ``sbi`` package) learns the
posterior of the parameters given an image from the training images; its samples for each test image
are scored exactly like a matching method's matches (:mod:`protolib.evaluation`). Two estimates:

- ``npe``: the flow on the Siamese network's **frozen** embedding, the same 32 numbers per image that
  the matching sees. It asks whether a posterior estimator reads more out of the embedding than its
  nearest neighbours do.
- ``npe_end_to_end``: the flow trained **together with its embedding network**, a copy of the
  autoencoder's encoder (chapter 02) that starts from the autoencoder's weights and learns from the
  parameters directly. This is what a practitioner of simulation-based inference would build: it asks
  whether the images hold more than the Siamese embedding keeps.

Both are amortised: one training, then samples for every target at once, in capped batches of targets
(``NPE_TARGET_BATCH``) so that memory stays bounded. Like the matches, each gets an interval widening
per parameter chosen on the validation systems by the one rule (:func:`~protolib.statistics.calibrate_widening`), so the
corrected rows of every method are compared on equal terms. ``sbi`` is installed by the project's set-up
(``make test``, ``make book``); elsewhere ``pip install 'protolib[posterior]'``. Nothing here downloads
anything, and sbi's TensorBoard log goes to a temporary folder.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import re
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .autoencoder import load_autoencoder
from .bank import Bank
from .distributions import summarise
from .evaluation import (
    DRAWS_SAMPLES,
    EvaluationSettings,
    MatchingMethod,
    MethodEvaluation,
    MethodResult,
    Relevance,
    distribution_metrics,
    image_rows,
    siamese_method,
)
from .matching import embed_bank
from .normalise import scaled_image_parameters
from .runtime import ProtolibInputError, atomic_path, default_device
from .statistics import calibrate_widening

__all__ = [
    "NPE_TARGET_BATCH",
    "NPE_KINDS",
    "NPE_CACHE_FOLDER",
    "OBSERVATION_VALIDATION_FRACTION",
    "NPEData",
    "TrainedFlow",
    "FittedNPE",
    "fit_npe",
    "npe_cache_key",
    "restore_flow",
    "trained_estimate",
    "score_npe",
    "npe_results",
    "observation_posterior",
    "ImageEmbedding",
    "sbi_available",
    "npe_data",
    "train_flow",
    "draw_samples",
    "npe_evaluation",
    "add_npe_result",
]

NPE_TARGET_BATCH = 64
"""Targets whose posterior samples are drawn at once (sbi holds ``n_samples`` x this many inputs in memory)."""

NPE_KINDS = {"npe": "frozen", "npe_end_to_end": "end_to_end"}
"""Evaluation method name -> the kind of estimate :func:`npe_evaluation` trains."""

NPE_CACHE_FOLDER = "npe_flows"
"""The folder, beside a configuration's networks, where the book's and the commands' trained estimates are kept
(:func:`trained_estimate`'s ``cache_dir``)."""

NPE_CACHE_KEPT = 8
"""Trained estimates of each name (``npe``, ``npe_end_to_end``, ``npe_observation``) kept in a cache folder; the
oldest beyond these are removed."""

OBSERVATION_VALIDATION_FRACTION = 0.15
"""The fraction of a bank's systems :func:`observation_posterior` holds out to choose its widenings."""


def sbi_available() -> bool:
    """Whether the ``sbi`` package can be imported."""
    try:
        import sbi  # noqa: F401
    except ImportError:
        return False
    return True


class ImageEmbedding(nn.Module):
    """The autoencoder's encoder as sbi's embedding network: ``x (N, 1 + H*W)`` (log flux, then stretched pixels) to
    ``(N, latent)``.

    sbi passes the data as one flat tensor per simulation; this splits it back into the encoder's two
    inputs. The encoder is a copy: training the flow changes it, never the autoencoder it came from.
    """

    def __init__(self, encoder: nn.Module, image_size: int):
        super().__init__()
        self.encoder, self.image_size = copy.deepcopy(encoder), image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flux, pixels = x[:, :1], x[:, 1:].reshape(-1, 1, self.image_size, self.image_size)
        return self.encoder(pixels, flux)


@dataclass
class NPEData:
    """What a flow learns from and is asked about, for one kind of estimate.

    Attributes:
        kind: ``"frozen"`` (inputs are Siamese embeddings) or ``"end_to_end"`` (inputs are images, see
            :class:`ImageEmbedding`).
        inputs: ``(N_images, D)`` the input of every bank image, row ``system * n_projections + projection``.
        values: ``(N_images, K)`` the parameters, scaled (log10 where log-scaled).
        names, logs: the ``K`` parameters and whether each is log-scaled.
        embedding_net: the network sbi trains with the flow (``None``: the inputs as they are).
    """

    kind: str
    inputs: np.ndarray
    values: np.ndarray
    names: list[str]
    logs: list[bool]
    embedding_net: nn.Module | None = None


def npe_data(kind: str, bank: Bank, *, model=None, autoencoder=None, parameters: list[str] | None = None) -> NPEData:
    """The inputs and scaled parameters of every bank image for a ``"frozen"`` or ``"end_to_end"`` estimate.

    ``"frozen"`` needs the Siamese ``model``; ``"end_to_end"`` the autoencoder (its preprocessing and a
    copy of its encoder).
    """
    names = [*bank.physical_parameters, "inclination"] if parameters is None else list(parameters)
    values, logs = scaled_image_parameters(bank, names)
    if kind == "frozen":
        if model is None:
            raise ProtolibInputError(
                "The neural posterior estimate on the Siamese embedding needs the trained Siamese network."
            )
        vectors, _, _ = embed_bank(siamese_method(model).embed, bank, progress=False)
        return NPEData(kind, np.asarray(vectors, dtype=np.float32), values, names, logs)
    if kind != "end_to_end":
        raise ProtolibInputError(
            f"Unknown kind of neural posterior estimate {kind!r}; known ones are 'frozen' and 'end_to_end'."
        )
    if autoencoder is None:
        raise ProtolibInputError(
            "The end-to-end neural posterior estimate needs the trained autoencoder (its encoder starts the embedding)."
        )
    images = bank.load_images().reshape(-1, bank.image_size, bank.image_size)
    inputs = []
    with torch.no_grad():
        for start in range(0, len(images), 256):
            pixels, flux = autoencoder.preprocessing(torch.as_tensor(np.ascontiguousarray(images[start : start + 256])))
            inputs.append(torch.cat([flux, pixels.flatten(1)], 1).numpy())
    # a copy: the autoencoder is left where it is
    embedding = ImageEmbedding(autoencoder.network.encoder, bank.image_size)
    return NPEData(kind, np.concatenate(inputs).astype(np.float32), values, names, logs, embedding)


@dataclass
class TrainedFlow:
    """An amortised posterior from :func:`train_flow`, and how its training went.

    Attributes:
        posterior: sbi's posterior (``sample_batched`` draws for many inputs at once).
        epochs: the epochs trained.
        converged: whether training stopped because sbi's held-out loss stopped improving (``False``: it hit
            ``max_epochs``).
        seconds: the training's wall time.
        cached: whether it was read from :func:`trained_estimate`'s cache rather than trained in this run.
    """

    posterior: object
    epochs: int
    converged: bool
    seconds: float
    cached: bool = False

    def describe(self) -> str:
        """How it was trained, for a report: ``"trained 143 epochs (converged), 21 s"`` (and ``", read from the
        cache"`` when :func:`trained_estimate` found it trained already)."""
        how = "converged" if self.converged else "the cap; its held-out loss was still falling"
        return f"trained {self.epochs} epochs ({how}), {self.seconds:.0f} s" + (
            ", read from the cache" if self.cached else ""
        )


class _NoTracking:
    """sbi's experiment-tracking protocol, doing nothing: sbi would otherwise write TensorBoard logs to ./sbi-logs."""

    log_dir = None

    def log_metric(self, name, value, step=None):
        pass

    def log_metrics(self, metrics, step=None):
        pass

    def log_params(self, params):
        pass

    def add_figure(self, name, figure, step=None):
        pass

    def flush(self):
        pass


class _EpochBar(io.TextIOBase):
    """Turns sbi's printed epoch counter ("Training neural network. Epochs trained: N") into a tqdm bar.

    sbi reports progress only by printing with a carriage return, which a notebook keeps line after
    line; it takes no callback. Everything else written goes on to the real stdout.
    """

    def __init__(self, bar, stdout):
        self.bar, self.stdout = bar, stdout

    def write(self, text: str) -> int:
        found = re.findall(r"Epochs trained: (\d+)", text)
        if found:
            # sbi counts one past the cap when it stops there
            self.bar.update(min(int(found[-1]), self.bar.total) - self.bar.n)
        elif text.strip() and "successfully converged" not in text:  # sbi's own note; TrainedFlow.describe() says it
            self.stdout.write(text)
        return len(text)


def train_flow(
    theta: np.ndarray,
    x: np.ndarray,
    *,
    embedding_net: nn.Module | None = None,
    max_epochs: int = 200,
    seed: int = 0,
    progress: bool = False,
    device: str | torch.device | None = None,
    description: str = "posterior estimate",
) -> TrainedFlow:
    """Train sbi's masked autoregressive flow on ``(theta (N, K), x (N, D))``; return its amortised posterior.

    ``theta`` should be standardised (mean 0, spread 1 per column). With an ``embedding_net`` the data
    are taken as they are (images are already stretched by the autoencoder's preprocessing); without one
    sbi standardises each input dimension. Training stops early on sbi's validation loss (10% of ``x``
    held out, after 20 epochs without improvement) or at ``max_epochs``; the result says which.
    """
    from sbi.inference import NPE

    device = _flow_device(embedding_net, device)
    torch.manual_seed(seed)
    builder = _flow_builder(embedding_net)
    start = time.perf_counter()
    with warnings.catch_warnings(), tqdm(total=max_epochs, desc=description, unit="epoch", disable=not progress) as bar:
        _quiet_sbi()
        inference = NPE(density_estimator=builder, device=device, show_progress_bars=progress, tracker=_NoTracking())
        inference.append_simulations(
            torch.as_tensor(theta, dtype=torch.float32), torch.as_tensor(x, dtype=torch.float32)
        )
        with contextlib.redirect_stdout(_EpochBar(bar, sys.stdout)):
            estimator = inference.train(max_num_epochs=max_epochs, show_train_summary=False)
        posterior = inference.build_posterior(estimator)
    epochs = int(inference.summary["epochs_trained"][-1])  # sbi's counter ends one past the cap when it hits it
    return TrainedFlow(posterior, min(epochs, max_epochs), epochs < max_epochs, time.perf_counter() - start)


def _flow_device(embedding_net: nn.Module | None, device: str | torch.device | None = None) -> str:
    """Where a flow trains: a flow on 32 numbers is faster on the CPU; one with an image embedding goes to the
    default device."""
    return str(default_device(device)) if embedding_net is not None else "cpu"


def _flow_builder(embedding_net: nn.Module | None):
    """sbi's builder of the masked autoregressive flow: inputs standardised per dimension, except images seen through
    an ``embedding_net`` (already stretched by the autoencoder's preprocessing)."""
    from sbi.neural_nets import posterior_nn

    return posterior_nn(
        model="maf",
        z_score_x="none" if embedding_net is not None else "independent",
        **({"embedding_net": embedding_net} if embedding_net is not None else {}),
    )


def _quiet_sbi() -> None:
    """Hide sbi's warnings that are understood and handled here (call inside ``warnings.catch_warnings()``): no prior
    is given (the training data's range is used), the epoch cap is reported by :attr:`TrainedFlow.converged`, and
    sbi's outlier check on z-scoring fires for image pixels, which are not z-scored (``z_score_x="none"``)."""
    for message in (".*prior.*", ".*not yet fully converged.*", ".*extreme outliers.*"):
        warnings.filterwarnings("ignore", message=message)


def restore_flow(
    state: dict, theta: np.ndarray, x: np.ndarray, *, embedding_net: nn.Module | None = None, device=None, **how
) -> TrainedFlow:
    """The flow :func:`train_flow` trained on ``(theta, x)``, rebuilt from its weights ``state`` (its
    ``posterior_estimator.state_dict()``) without training: its samples are those of the trained flow, bit for bit.

    ``how``: the :class:`TrainedFlow` fields ``epochs``, ``converged`` and ``seconds`` of the training. sbi has no
    loader that does not unpickle; the flow is built again by sbi's builder (whose standardising constants are
    weights too) and given the weights.
    """
    from sbi.inference import NPE

    device = _flow_device(embedding_net, device)
    builder = _flow_builder(embedding_net)
    theta_t, x_t = torch.as_tensor(theta, dtype=torch.float32), torch.as_tensor(x, dtype=torch.float32)
    with warnings.catch_warnings():
        _quiet_sbi()
        estimator = builder(theta_t[:256], x_t[:256])  # shapes only: every constant is in ``state``
        estimator.load_state_dict(state)
        inference = NPE(density_estimator=builder, device=device, show_progress_bars=False, tracker=_NoTracking())
        inference.append_simulations(theta_t, x_t)  # the prior: the training values' range, as in training
        posterior = inference.build_posterior(estimator.to(device))
    return TrainedFlow(posterior, cached=True, **how)


def draw_samples(
    flow: TrainedFlow,
    x: np.ndarray,
    n_samples: int,
    *,
    seed: int = 0,
    batch: int = NPE_TARGET_BATCH,
    progress: bool = False,
) -> np.ndarray:
    """``(T, n_samples, K)`` posterior samples for inputs ``x (T, D)``, drawn for ``batch`` targets at a time.

    sbi caps its own sampling batch to bound memory and says so each time; that cap is what we want, so
    it is not shown.
    """
    torch.manual_seed(seed)
    out = []
    for start in tqdm(range(0, len(x), batch), desc="posterior samples", unit="batch", disable=not progress):
        chunk = torch.as_tensor(x[start : start + batch], dtype=torch.float32)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(acceptance|rejection|max_sampling_batch_size|support).*")
            drawn = flow.posterior.sample_batched((n_samples,), x=chunk, show_progress_bars=False)  # (n, t, K)
        out.append(drawn.permute(1, 0, 2).cpu().numpy().astype(np.float64))
    return np.concatenate(out)


def _rows(bank: Bank, systems, projection: int | None) -> np.ndarray:
    """Image rows (``system * n_projections + projection``) of ``systems``' targets, every projection when
    ``projection`` is ``None``."""
    system, proj = image_rows(bank, np.asarray(systems), projection)
    return system * bank.n_projections + proj


@dataclass
class FittedNPE:
    """A neural posterior estimate trained on one bank's training systems, ready to score targets from any bank of the
    same setup.

    Attributes:
        name: its evaluation method name (``"npe"`` or ``"npe_end_to_end"``).
        flow: the trained flow (:class:`TrainedFlow`).
        data: the training bank's inputs and parameters (:class:`NPEData`).
        centre, spread: the training values' mean and spread (the flow learns standardised values).
        train: the training image rows.
        bank_path: the bank it learnt from (targets from it reuse ``data``).
        widening: per parameter, the interval widening chosen on the validation systems (``None``: none chosen).
    """

    name: str
    flow: TrainedFlow
    data: NPEData
    centre: np.ndarray
    spread: np.ndarray
    train: np.ndarray
    bank_path: Path
    widening: dict[str, float] | None = None

    def samples(self, inputs: np.ndarray, n_samples: int, *, seed: int = 0, progress: bool = False) -> np.ndarray:
        """``(T, n_samples, K)`` samples in the parameters' scaled units for inputs ``(T, D)``."""
        return draw_samples(self.flow, inputs, n_samples, seed=seed, progress=progress) * self.spread + self.centre


def fit_npe(
    bank: Bank,
    split,
    *,
    kind: str = "frozen",
    model=None,
    autoencoder=None,
    settings: EvaluationSettings | None = None,
    parameters: list[str] | None = None,
    progress: bool = False,
    cache_dir: str | Path | None = None,
) -> FittedNPE:
    """Train a neural posterior estimate on ``split.train`` (every projection) and choose its widenings on
    ``split.validation``.

    ``kind``: ``"frozen"`` (on the Siamese embedding; needs ``model``) or ``"end_to_end"`` (needs
    ``autoencoder``). ``settings``: ``npe_max_epochs``, ``npe_samples``, ``projection``,
    ``widening_candidates``, ``correction`` and ``seed`` are used. ``parameters``: estimated (default:
    every bank parameter and the inclination). ``cache_dir``: a folder where trained estimates are kept, keyed
    by everything they learn from (:func:`trained_estimate`); one found there is read instead of trained again,
    with the same samples (chapters 06 and 06b train the same two estimates).
    """
    if not sbi_available():
        raise ProtolibInputError(
            "The neural posterior estimate needs the sbi package (pip install 'protolib[posterior]')."
        )
    settings = settings or EvaluationSettings()
    data = npe_data(kind, bank, model=model, autoencoder=autoencoder, parameters=parameters)
    train = _rows(bank, split.train, None)
    validation = (
        _rows(bank, split.validation, settings.projection)
        if settings.correction == "choose_k_and_widening" and len(split.validation)
        else None
    )
    name = next(n for n, k in NPE_KINDS.items() if k == kind)
    flow, centre, spread, widening = trained_estimate(
        name,
        data.names,
        (data.values[train], data.inputs[train]),
        None if validation is None else (data.values[validation], data.inputs[validation]),
        settings,
        embedding_net=data.embedding_net,
        cache_dir=cache_dir,
        progress=progress,
    )
    return FittedNPE(name, flow, data, centre, spread, train, Path(bank.path), widening)


def trained_estimate(
    name: str,
    names: list[str],
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray] | None,
    settings: EvaluationSettings,
    *,
    embedding_net: nn.Module | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    description: str | None = None,
) -> tuple[TrainedFlow, np.ndarray, np.ndarray, dict[str, float] | None]:
    """A flow trained on ``train = (values (N, K), inputs (N, D))`` (the ``names``' scaled values, standardised for
    training), and each parameter's widening chosen on ``validation`` (same shapes; ``None``: no widening), from
    ``settings`` (``npe_max_epochs``, ``npe_samples``, ``widening_candidates``, ``seed``).

    With a ``cache_dir``, the estimate is kept there as ``<name>-<key>.pt`` (:func:`npe_cache_key`; at most
    ``NPE_CACHE_KEPT`` of each name) and read back, with the same samples and widenings, instead of being trained
    again. Returns ``(flow, centre, spread, widening)``: samples in scaled units are ``flow`` samples x spread +
    centre.
    """
    values, inputs = train
    centre, spread = values.mean(0), values.std(0) + 1e-12
    key = None if cache_dir is None else npe_cache_key(name, names, train, validation, settings, embedding_net)
    path = None if key is None else Path(cache_dir) / f"{name}-{key}.pt"
    found = _read_estimate(path, (values - centre) / spread, inputs, embedding_net) if path and path.is_file() else None
    if found is not None:
        return found[0], centre, spread, found[1]
    flow = train_flow(
        (values - centre) / spread,
        inputs,
        embedding_net=embedding_net,
        max_epochs=settings.npe_max_epochs,
        seed=settings.seed,
        progress=progress,
        description=description or f"training {name}",
    )
    widening = None
    if validation is not None:
        drawn = draw_samples(flow, validation[1], settings.npe_samples, seed=settings.seed + 1) * spread + centre
        widening = _calibrated(drawn, validation[0], names, settings.widening_candidates)
    if path is not None:
        _keep_estimate(path, name, flow, widening)
    return flow, centre, spread, widening


def npe_cache_key(name: str, names: list[str], train, validation, settings, embedding_net=None) -> str:
    """The name of a trained estimate in :func:`trained_estimate`'s cache: a SHA-256 of everything its samples and
    widenings depend on (the training and validation values and inputs, the embedding network's starting weights,
    the settings used, where it trains, and the sbi and torch versions), so that a changed bank, network or setting
    trains anew."""
    import sbi

    digest = hashlib.sha256()
    fields = (settings.npe_max_epochs, settings.npe_samples, settings.seed, list(settings.widening_candidates))
    what = [name, list(names), list(fields), sbi.__version__, torch.__version__, _flow_device(embedding_net)]
    digest.update(json.dumps(what, default=str).encode())
    for array in (*train, *(validation if validation is not None else ())):
        digest.update(str(np.shape(array)).encode() + np.ascontiguousarray(array).tobytes())
    if embedding_net is not None:
        for key, tensor in embedding_net.state_dict().items():
            digest.update(key.encode() + tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


def _write_estimate(path: Path, name: str, flow: TrainedFlow, widening: dict | None) -> None:
    """A trained estimate into the cache: its flow's weights, how it was trained and its widenings, plain tensors and
    numbers (read back with ``weights_only=True``, so that reading it runs no code); written atomically."""
    state = {k: v.detach().cpu() for k, v in flow.posterior.posterior_estimator.state_dict().items()}
    how = {"epochs": flow.epochs, "converged": flow.converged, "seconds": flow.seconds}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"state": state, "how": how, "widening": widening}, tmp)
    kept = sorted(path.parent.glob(f"{name}-*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in kept[NPE_CACHE_KEPT:]:  # the oldest beyond the newest few of this name
        old.unlink(missing_ok=True)


def _keep_estimate(path: Path, name: str, flow: TrainedFlow, widening: dict | None) -> None:
    """:func:`_write_estimate`, or a warning when the cache folder cannot be written (a read-only model folder, a
    full disk): the estimate is then used for this run only, as an unwritable embedding cache is."""
    try:
        _write_estimate(path, name, flow, widening)
    except (OSError, ProtolibInputError) as error:
        warnings.warn(
            f"The trained estimate could not be kept in {path.parent} ({error}); it is used for this run only and "
            "trained again next time.",
            stacklevel=4,
        )


def _read_estimate(path: Path, theta: np.ndarray, inputs: np.ndarray, embedding_net) -> tuple | None:
    """``(flow, widening)`` from the cache, or ``None`` (with a warning naming the file, which is then trained again
    and replaced) when it cannot be read."""
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        flow = restore_flow(stored["state"], theta, inputs, embedding_net=embedding_net, **stored["how"])
    except Exception as error:  # a cache is a convenience: any unreadable file is trained again
        warnings.warn(
            f"The trained estimate {path} in the cache could not be read ({type(error).__name__}); it is trained "
            "again and replaced.",
            stacklevel=4,
        )
        return None
    return flow, stored["widening"]


def score_npe(
    fitted: FittedNPE,
    bank: Bank,
    systems,
    relevance: Relevance,
    *,
    settings: EvaluationSettings | None = None,
    model=None,
    autoencoder=None,
    progress: bool = False,
) -> MethodResult:
    """Score a fitted estimate on ``systems`` of ``bank``, as a matching method is scored.

    ``bank`` may be another bank of the same setup than the one it learnt from (chapter 06b's shifted
    targets); its inputs are then computed with the same ``model`` or ``autoencoder``.

    Returns:
        Its :class:`~protolib.evaluation.MethodResult`: ``evaluation`` with the flow's samples as they come,
        ``corrected`` with the widening chosen on validation systems (``chosen_k`` is the number of samples).
    """
    settings = settings or EvaluationSettings()
    data = (
        fitted.data
        if Path(bank.path) == fitted.bank_path
        else npe_data(fitted.data.kind, bank, model=model, autoencoder=autoencoder, parameters=fitted.data.names)
    )
    test = _rows(bank, systems, settings.projection)
    samples = fitted.samples(data.inputs[test], settings.npe_samples, seed=settings.seed, progress=progress)
    prior_spread = fitted.data.values[fitted.train].std(0)

    def score(widening):
        return _score(samples, data, test, prior_spread, bank, relevance, fitted.name, widening, settings)

    method = MatchingMethod(fitted.name, None, DRAWS_SAMPLES, _describe(fitted, settings.npe_samples))
    result = MethodResult(method, score(1.0))
    if fitted.widening is not None:
        result.chosen_k, result.chosen_widening, result.corrected = (
            settings.npe_samples,
            fitted.widening,
            score(fitted.widening),
        )
    return result


def _describe(fitted: FittedNPE, n_samples: int) -> str:
    """One line for tables and reports: which estimate, its flow, and its samples per target."""
    description = (
        "neural posterior estimate (sbi MAF) on the frozen Siamese embedding"
        if fitted.data.kind == "frozen"
        else "neural posterior estimate (sbi MAF) trained end to end with the autoencoder's encoder"
    )
    return f"{description}, {fitted.flow.describe()}, {n_samples} samples per target"


def npe_evaluation(
    bank: Bank,
    split,
    relevance: Relevance,
    *,
    kind: str = "frozen",
    model=None,
    autoencoder=None,
    settings: EvaluationSettings | None = None,
    parameters: list[str] | None = None,
    progress: bool = False,
) -> MethodResult:
    """Train a neural posterior estimate on ``split.train`` and score it on ``split.test`` of the same bank
    (:func:`fit_npe`, :func:`score_npe`)."""
    fitted = fit_npe(
        bank,
        split,
        kind=kind,
        model=model,
        autoencoder=autoencoder,
        settings=settings,
        parameters=parameters,
        progress=progress,
    )
    return score_npe(fitted, bank, split.test, relevance, settings=settings, progress=progress)


def _score(
    samples: np.ndarray,
    data: NPEData,
    test: np.ndarray,
    prior_spread: np.ndarray,
    bank: Bank,
    relevance: Relevance,
    name: str,
    widening,
    settings: EvaluationSettings,
) -> MethodEvaluation:
    """The test samples' figures, as :func:`~protolib.evaluation.distribution_metrics` gives them for matches."""
    z_samples = _normalised(samples, data.names, data.logs, relevance)
    z_truths = _normalised(data.values[test][:, None, :], data.names, data.logs, relevance)[:, 0]
    evaluation = distribution_metrics(
        samples,
        data.values[test],
        data.names,
        data.logs,
        prior_spread,
        bank,
        relevance,
        z_samples,
        z_truths,
        method=name,
        weights=None,
        widening=widening,
        rank_bins=settings.rank_bins,
        seed=settings.seed,
    )
    evaluation.target_system = test // bank.n_projections
    return evaluation


def _autoencoder_of(model):
    """The autoencoder the Siamese ``model`` was trained from, or ``None`` (with a warning) when its checkpoint is
    gone."""
    path = Path((model.checkpoint if model is not None else {}).get("autoencoder", ""))
    if not path.is_file():
        warnings.warn(
            f"The autoencoder {path} the network was trained from is gone; the end-to-end neural posterior estimate is "
            "left out.",
            stacklevel=3,
        )
        return None
    return load_autoencoder(path)


def _normalised(samples: np.ndarray, names: list[str], logs: list[bool], relevance: Relevance) -> np.ndarray:
    """Scaled samples ``(T, n, K)`` to the relevance's normalised parameters ``(T, n, K')``."""
    columns = [names.index(name) for name in relevance.definition.parameters]
    scaled = samples[..., columns]
    physical = np.where(np.array([logs[c] for c in columns]), 10.0 ** np.clip(scaled, -300, 300), scaled)
    return relevance.normaliser.transform(physical.reshape(-1, len(columns))).reshape(*samples.shape[:2], len(columns))


def add_npe_result(
    results: dict,
    bank: Bank,
    split,
    relevance: Relevance,
    settings: EvaluationSettings,
    *,
    model=None,
    autoencoder=None,
    parameters: list[str] | None = None,
    progress: bool = False,
    cache_dir: str | Path | None = None,
) -> dict:
    """Add each neural posterior estimate that ``settings.methods`` lists (``npe``, ``npe_end_to_end``) to ``results``.

    Warns and adds nothing when ``sbi`` is not installed. ``cache_dir``: where trained estimates are kept
    (:func:`fit_npe`). Returns ``results``.
    """
    found = npe_results(
        bank,
        split,
        relevance,
        settings,
        {"test": (bank, split.test)},
        model=model,
        autoencoder=autoencoder,
        parameters=parameters,
        progress=progress,
        cache_dir=cache_dir,
    )
    results.update(found.get("test", {}))
    return results


def _estimates_to_make(settings: EvaluationSettings, model, autoencoder) -> tuple[list[str] | None, object]:
    """The estimates ``settings.methods`` lists that can be made, and the end-to-end one's autoencoder.

    ``None``, with a warning, when some are listed and ``sbi`` is not installed; the end-to-end estimate
    is left out when no autoencoder is given and the one ``model`` was trained from is gone.
    """
    wanted = [name for name in NPE_KINDS if name in settings.methods]
    if wanted and not sbi_available():
        warnings.warn(
            "The sbi package is not installed; the neural posterior estimates are left out (pip install "
            "'protolib[posterior]').",
            stacklevel=3,
        )
        return None, autoencoder
    if "npe_end_to_end" in wanted and autoencoder is None:
        autoencoder = _autoencoder_of(model)
        if autoencoder is None:
            wanted.remove("npe_end_to_end")
    return wanted, autoencoder


def npe_results(
    bank: Bank,
    split,
    relevance: Relevance,
    settings: EvaluationSettings,
    targets: dict,
    *,
    model=None,
    autoencoder=None,
    parameters: list[str] | None = None,
    progress: bool = False,
    cache_dir: str | Path | None = None,
) -> dict[str, dict[str, MethodResult]]:
    """Each estimate that ``settings.methods`` lists, trained once on ``bank``'s training systems and scored on several
    sets of targets.

    ``targets``: case -> ``(bank, systems)``, e.g. the same test systems rendered with the bank's physics
    and with another (chapter 06b). The autoencoder of the end-to-end estimate defaults to the one
    ``model`` was trained from. ``cache_dir``: where trained estimates are kept (:func:`fit_npe`). Returns case ->
    method name -> :class:`~protolib.evaluation.MethodResult` (empty, with a warning, when ``sbi`` is not installed).
    """
    wanted, autoencoder = _estimates_to_make(settings, model, autoencoder)
    if wanted is None:
        return {}
    found = {case: {} for case in targets}
    common = {"model": model, "autoencoder": autoencoder, "settings": settings, "progress": progress}
    for name in wanted:
        fitted = fit_npe(bank, split, kind=NPE_KINDS[name], parameters=parameters, cache_dir=cache_dir, **common)
        for case, (target_bank, systems) in targets.items():
            found[case][name] = score_npe(fitted, target_bank, systems, relevance, **common)
    return found


def _held_out(systems: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Whether each row's system is among a seeded ``fraction`` of the distinct ``systems`` (at least one) held out."""
    distinct = np.unique(systems)
    return np.isin(
        systems, np.random.default_rng(seed).permutation(distinct)[: max(1, round(fraction * len(distinct)))]
    )


def _calibrated(drawn: np.ndarray, truths: np.ndarray, names: list[str], candidates) -> dict[str, float]:
    """Each parameter's widening of the posterior samples' intervals, by the one rule
    (:func:`~protolib.statistics.calibrate_widening`) on held-out systems: ``drawn (T, n, K)``, ``truths (T, K)``."""
    return {n: calibrate_widening(drawn[..., j], truths[:, j], candidates)["widening"] for j, n in enumerate(names)}


def observation_posterior(
    matcher,
    image: np.ndarray,
    *,
    parameters: list[str] | None = None,
    settings: EvaluationSettings | None = None,
    n_samples: int = 4000,
    validation_fraction: float = OBSERVATION_VALIDATION_FRACTION,
    progress: bool = False,
    cache_dir: str | Path | None = None,
) -> dict:
    """The neural posterior estimate for one observation, beside its matches: trained on the bank as the matcher sees
    it.

    The flow learns from the matcher's bank embeddings, that is the bank brought to the observation's
    beam, noise and recoverable scale (or, for a tiered search, to its nearest resolution tier); a
    seeded ``validation_fraction`` of the systems is held out to choose each parameter's widening, as
    the matches' intervals are calibrated on reference targets. The observation's own embedding is then
    the flow's input. Only the estimate on the frozen Siamese embedding is made here: the end-to-end
    one would train a network per map. ``cache_dir``: where the trained estimate is kept, so that matching the
    same map again with the same bank and network reads it (:func:`trained_estimate`).

    Returns:
        ``{"description": ..., "summary": [ParameterSummary as dict, ...]}`` in physical units, the
        intervals widened (``widening`` per parameter), for ``report.json`` and
        :func:`~protolib.literature.compare_with_literature`.
    """
    settings = settings or EvaluationSettings()
    bank = matcher.bank
    # summary.csv's rows less the position angle: the sky's orientation, which the embedding ignores by design
    names = [*bank.parameters, "inclination"] if parameters is None else list(parameters)
    values, logs = scaled_image_parameters(bank, names)
    embeddings = matcher.embeddings
    rows = np.asarray(embeddings.system) * bank.n_projections + np.asarray(embeddings.projection)
    vectors, values = np.asarray(embeddings.vectors, dtype=np.float32), values[rows]
    held = _held_out(np.asarray(embeddings.system), validation_fraction, settings.seed)
    flow, centre, spread, widening = trained_estimate(
        "npe_observation",
        names,
        (values[~held], vectors[~held]),
        (values[held], vectors[held]),
        settings,
        cache_dir=cache_dir,
        progress=progress,
        description="training the posterior estimate",
    )
    scaled = draw_samples(flow, matcher.embed(image), n_samples, seed=settings.seed)[0] * spread + centre  # (n, K)
    samples = {n: 10.0 ** scaled[:, j] if logs[j] else scaled[:, j] for j, n in enumerate(names)}
    prior = {n: 10.0 ** values[:, j] if logs[j] else values[:, j] for j, n in enumerate(names)}
    summaries = summarise(samples, parameters=names, prior=prior, parameter_info=bank.parameter_info, widening=widening)
    return {
        "description": "neural posterior estimate (sbi MAF) on the Siamese embedding of the bank at this "
        "observation's setup, "
        f"{flow.describe()}, {n_samples} samples",
        "summary": [asdict(s) for s in summaries],
    }
