"""Deprecated alias of :mod:`protolib.target_similarity` (renamed in 0.2; this alias goes in the next release)."""

import warnings

from .target_similarity import *  # noqa: F401,F403
from .target_similarity import __all__  # noqa: F401

warnings.warn("protolib.targets is now protolib.target_similarity; import it from there (the alias goes in the next release).",
              DeprecationWarning, stacklevel=2)
