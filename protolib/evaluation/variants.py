"""Which target similarity and loss? The Siamese networks the evaluation compares, settled by the same evaluation."""

from __future__ import annotations

__all__ = ["VARIANTS"]

VARIANTS = {
    "kernel + mse": ("siamese.pt", {}),
    "cosine + mse": ("siamese_cosine.pt", {"target": {"kind": "cosine"}}),
    "kernel + contrastive": ("siamese_contrastive.pt", {"loss": {"kind": "contrastive"}}),
    "kernel + log_ratio": ("siamese_log_ratio.pt", {"loss": {"kind": "log_ratio"}}),
}
"""Variants compared by :func:`~protolib.pipelines.evaluate.compare_variants`: name -> (checkpoint file, overrides of
the ``siamese:`` section).

The first two are the networks chapter 03 trains, so a book build reuses them."""
