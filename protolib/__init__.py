"""protolib: match observed images of protostellar systems to a bank of simulated ones."""

__version__ = "0.1.0"

# Names are imported on first use (PEP 562), so that `import protolib` and the command line start
# fast and torch is loaded only by what needs it.
_EXPORTS = {
    "Bank": "bank",
    "draw_systems": "bank",
    "import_thesis_snapshots": "bank",
    "render_systems": "bank",
    "simulate_bank": "bank",
    "load_config": "config",
    "load_autoencoder": "autoencoder",
    "Beam": "instrument",
    "Instrument": "instrument",
    "Matcher": "matching",
    "ParameterNormaliser": "normalise",
    "ResolutionMatch": "observation",
    "prepare_observation": "observation",
    "read_observation": "observation",
    "write_observation_fits": "observation",
    "PARAMETER_NAMES": "parameters",
    "PARAMETERS": "parameters",
    "Prior": "parameters",
    "load_siamese": "siamese",
    "SimulatorConfig": "simulator",
    "render": "simulator",
    "Split": "splits",
    "split_systems": "splits",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'protolib' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "Bank",
    "Beam",
    "Instrument",
    "Matcher",
    "PARAMETERS",
    "PARAMETER_NAMES",
    "ParameterNormaliser",
    "ResolutionMatch",
    "Prior",
    "SimulatorConfig",
    "Split",
    "draw_systems",
    "import_thesis_snapshots",
    "load_autoencoder",
    "load_config",
    "load_siamese",
    "prepare_observation",
    "read_observation",
    "render",
    "render_systems",
    "simulate_bank",
    "split_systems",
    "write_observation_fits",
]
