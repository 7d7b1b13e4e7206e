"""protolib: match observed images of protostellar systems to a bank of simulated ones."""

__version__ = "0.1.0"

from .bank import Bank, draw_systems, import_thesis_snapshots, render_systems, simulate_bank
from .config import load_config
from .instrument import Beam, Instrument
from .normalise import ParameterNormaliser
from .observation import ResolutionMatch, prepare_observation, read_observation, write_observation_fits
from .parameters import PARAMETER_NAMES, PARAMETERS, Prior
from .simulator import SimulatorConfig, render
from .splits import Split, split_systems

__all__ = [
    "Bank",
    "Beam",
    "Instrument",
    "PARAMETERS",
    "PARAMETER_NAMES",
    "ParameterNormaliser",
    "ResolutionMatch",
    "Prior",
    "SimulatorConfig",
    "Split",
    "draw_systems",
    "import_thesis_snapshots",
    "load_config",
    "prepare_observation",
    "read_observation",
    "render",
    "render_systems",
    "simulate_bank",
    "split_systems",
    "write_observation_fits",
]
