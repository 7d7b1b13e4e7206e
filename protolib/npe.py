"""Neural posterior estimation on the Siamese network's frozen embedding: the reference matching is measured against.

A normalising flow (a masked autoregressive flow, trained with the ``sbi`` package) learns the
posterior of the parameters given an image's embedding from the training images; its samples for each
test image are scored exactly like a matching method's matches (:mod:`protolib.evaluation`). The
encoder stays frozen: the flow sees the same 32 numbers per image the matching does. ``sbi`` is an
optional dependency (``pip install 'protolib[posterior]'``); nothing here downloads anything.
"""

from __future__ import annotations

import tempfile

import warnings

import numpy as np
import torch

from .bank import Bank
from .evaluation import (EvaluationSettings, MatchingMethod, MethodEvaluation, MethodResult, Relevance, distribution_metrics, image_rows,
                         siamese_method)
from .matching import embed_bank
from .normalise import scaled_image_parameters
from .runtime import ProtolibInputError

__all__ = ["sbi_available", "npe_evaluation", "add_npe_result"]


def sbi_available() -> bool:
    """Whether the optional ``sbi`` package can be imported."""
    try:
        import sbi  # noqa: F401
    except ImportError:
        return False
    return True


def npe_evaluation(
    model,
    bank: Bank,
    split,
    relevance: Relevance,
    *,
    projection: int | None = None,
    parameters: list[str] | None = None,
    n_samples: int = 200,
    max_epochs: int = 200,
    rank_bins: int = 10,
    seed: int = 0,
) -> tuple[MatchingMethod, MethodEvaluation]:
    """Train a neural posterior estimate on the training images' frozen embeddings and score it on the test images.

    Arguments:
        model: a trained :class:`~protolib.siamese.SiameseModel` (its embedding is the flow's input).
        bank: the bank it was trained on.
        split: the model's split (flow trained on ``train``, with sbi's own validation fraction; scored on ``test``).
        relevance: the target similarity (for TARP's normalised parameters).
        projection: the targets' projection (``None``: all).
        parameters: parameters estimated (default: every bank parameter and the inclination), log10 where log-scaled.
        n_samples: posterior samples per test image (they play the matches' part).
        max_epochs: the flow's training epochs at most (sbi stops early on its validation loss).
        rank_bins, seed: as in :func:`~protolib.evaluation.score_ranking`.

    Returns:
        The method (for reports) and its :class:`~protolib.evaluation.MethodEvaluation` (no similarity or retrieval figures).
    """
    if not sbi_available():
        raise ProtolibInputError("The neural posterior estimate needs the sbi package (pip install 'protolib[posterior]').")
    names = [*bank.physical_parameters, "inclination"] if parameters is None else list(parameters)
    method = siamese_method(model)
    vectors, _, _ = embed_bank(method.embed, bank, progress=False)
    values, logs = scaled_image_parameters(bank, names)
    p = bank.n_projections
    train_rows = (np.asarray(split.train)[:, None] * p + np.arange(p)).ravel()
    target_system, target_projection = image_rows(bank, split.test, projection)
    target_rows = target_system * p + target_projection
    samples = _posterior_samples(values[train_rows], vectors[train_rows], vectors[target_rows], n_samples=n_samples, max_epochs=max_epochs,
                                 seed=seed)
    z_samples, z_truths = _normalised(samples, names, logs, relevance), _normalised(values[target_rows][:, None, :], names, logs, relevance)[:, 0]
    evaluation = distribution_metrics(samples, values[target_rows], names, logs, values[train_rows].std(0), bank, relevance, z_samples, z_truths,
                                      method="npe", weights=None, widening=1.0, rank_bins=rank_bins, seed=seed)
    npe = MatchingMethod("npe", method.embed, "cosine", f"neural posterior estimate (sbi MAF) on the frozen Siamese embedding, {n_samples} samples")
    return npe, evaluation


def _posterior_samples(train_values: np.ndarray, train_vectors: np.ndarray, target_vectors: np.ndarray, *, n_samples: int, max_epochs: int,
                       seed: int) -> np.ndarray:
    """Train sbi's MAF on ``(train_values (N, K), train_vectors (N, D))`` and draw ``(T, n_samples, K)`` for ``target_vectors (T, D)``.

    The flow sees the values standardised on the training images; its samples come back in the values' own scale.
    """
    from sbi.inference import NPE
    from torch.utils.tensorboard import SummaryWriter

    centre, spread = train_values.mean(0), train_values.std(0) + 1e-12
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as log_dir:  # sbi would otherwise write ./sbi-logs wherever it runs
        writer = SummaryWriter(log_dir=log_dir)
        inference = NPE(density_estimator="maf", show_progress_bars=False, summary_writer=writer)
        theta = torch.as_tensor((train_values - centre) / spread, dtype=torch.float32)
        inference.append_simulations(theta, torch.as_tensor(train_vectors)).train(max_num_epochs=max_epochs, show_train_summary=False)
        writer.close()
    posterior = inference.build_posterior()
    drawn = posterior.sample_batched((n_samples,), x=torch.as_tensor(target_vectors), show_progress_bars=False)  # (n, T, K)
    return drawn.permute(1, 0, 2).numpy().astype(np.float64) * spread + centre  # (T, n, K)


def _normalised(samples: np.ndarray, names: list[str], logs: list[bool], relevance: Relevance) -> np.ndarray:
    """Scaled samples ``(T, n, K)`` to the relevance's normalised parameters ``(T, n, K')``."""
    columns = [names.index(name) for name in relevance.definition.parameters]
    scaled = samples[..., columns]
    physical = np.where(np.array([logs[c] for c in columns]), 10.0 ** np.clip(scaled, -300, 300), scaled)
    return relevance.normaliser.transform(physical.reshape(-1, len(columns))).reshape(*samples.shape[:2], len(columns))


def add_npe_result(results: dict, model, bank: Bank, split, relevance: Relevance, settings: EvaluationSettings) -> dict:
    """Add the neural posterior estimate to :func:`~protolib.evaluation.evaluate_methods`'s ``results`` as ``"npe"``.

    Warns and adds nothing when ``sbi`` is not installed. Returns ``results``.
    """
    if not sbi_available():
        warnings.warn("The sbi package is not installed; the neural posterior estimate is left out (pip install 'protolib[posterior]').",
                      stacklevel=2)
        return results
    npe, evaluation = npe_evaluation(model, bank, split, relevance, projection=settings.projection, n_samples=settings.npe_samples,
                                     max_epochs=settings.npe_max_epochs, rank_bins=settings.rank_bins, seed=settings.seed)
    results["npe"] = MethodResult(npe, evaluation)
    return results
