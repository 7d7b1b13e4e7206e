"""``python -m protolib`` runs the command line (also under ``torchrun -m protolib``)."""

import sys

from .cli import main

sys.exit(main())
