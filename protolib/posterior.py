"""Deprecated alias of :mod:`protolib.npe` (renamed in 0.2; this alias goes in the next release)."""

import warnings

from .npe import *  # noqa: F401,F403
from .npe import __all__  # noqa: F401

warnings.warn("protolib.posterior is now protolib.npe; import it from there (the alias goes in the next release).",
              DeprecationWarning, stacklevel=2)
