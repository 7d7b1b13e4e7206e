"""Deprecated alias of :mod:`protolib.pipelines.train` (renamed in 0.2; this alias goes in the next release)."""

import warnings

from .pipelines.train import *  # noqa: F401,F403
from .pipelines.train import __all__  # noqa: F401

warnings.warn("protolib.learning is now protolib.pipelines.train; import it from there (the alias goes in the next release).",
              DeprecationWarning, stacklevel=2)
