"""The floor plan: layers without cycles or upward imports, no private names across modules, short functions.

The import graph is read from the source with :mod:`ast`, imports inside functions included, so a
cycle cannot hide behind a late import. ``book/architecture.md`` describes the layers checked here.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "protolib"

# Lowest first. A module may import from its own layer (without a cycle) and from the layers below.
LAYERS = [
    {
        "runtime",
        "physics",
        "instrument",
        "distributed",
        "goodness_of_fit",
        "losses",
        "pairs",
        "splits",
        "target_similarity",
        "statistics",
        "plots",
        "plots.style",
        "plots.images",
        "plots.learning",
        "plots.gallery",
        "plots.attribution",
    },
    {"parameters", "simulator", "normalise", "images", "plots.embedding_maps"},
    {"bank", "cluster", "training", "plots.bank"},
    {"autoencoder", "band_siamese", "siamese", "observation", "plots.observation"},
    {"matching", "distributions", "literature", "embedding_maps", "attribution", "explorer", "plots.corner"},
    {
        "evaluation",
        "comparison",
        "domain_shift",
        "npe",
        "tuning",
        "misfits",
        "out_of_family",
        "plots.evaluation",
        "plots.domain_shift",
        "plots.tuning",
    },
    {"config"},
    {"pipelines"},
    {"cli", "__main__"},
]
MAX_FUNCTION_LINES = 40


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {
        _module_name(path): ast.parse(path.read_text(), filename=str(path)) for path in sorted(PACKAGE.rglob("*.py"))
    }


MODULES = _modules()


def _is_package(name: str) -> bool:
    return (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> list[tuple[str, str, int]]:
    """``(imported module, imported name or "", line)`` for every protolib import in ``module``."""
    found = []
    for node in ast.walk(MODULES[module]):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            if target.startswith("protolib"):
                for alias in node.names:
                    submodule = f"{target}.{alias.name}"
                    found.append(
                        (submodule, "", node.lineno) if submodule in MODULES else (target, alias.name, node.lineno)
                    )
        elif isinstance(node, ast.Import):
            found += [(alias.name, "", node.lineno) for alias in node.names if alias.name.startswith("protolib")]
    return found


def _edges() -> dict[str, set[str]]:
    graph = {name: set() for name in MODULES}
    for module in MODULES:
        for target, _, _ in _imports(module):
            if target != "protolib" and target != module and target in MODULES:
                graph[module].add(target)
    return graph


def _layer(module: str) -> int:
    """The layer of ``module``: that of its sub-module name (``"plots.style"``) when listed, else its top-level name's.

    A subpackage whose modules span layers (``plots``: one module per subject, each as low as its
    inputs allow) lists each module; the others are listed by their top-level name.
    """
    parts = module.split(".")[1:]
    for name in (".".join(parts[:2]), parts[0] if parts else ""):
        for level, names in enumerate(LAYERS):
            if name in names:
                return level
    raise AssertionError(
        f"{module} is in no layer of tests/test_architecture.py; add it where it belongs (and to book/architecture.md)"
    )


def test_every_module_has_a_layer():
    for module in MODULES:
        if module != "protolib":
            _layer(module)


def test_the_import_graph_has_no_cycle():
    graph, state, cycles = _edges(), {}, []

    def visit(node, path):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_no_module_imports_upward():
    upward = []
    for module, targets in _edges().items():
        if module == "protolib":
            continue
        for target in targets:
            if _layer(target) > _layer(module):
                upward.append(f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})")
    assert not upward, "; ".join(sorted(upward))


def test_only_the_pipelines_and_the_command_line_read_configurations():
    readers = {module for module, targets in _edges().items() if "protolib.config" in targets}
    assert readers <= {m for m in MODULES if m.startswith(("protolib.pipelines", "protolib.cli"))}, readers


def test_no_private_name_crosses_a_module():
    crossings = [
        f"{module}:{line} imports {name} from {target}"
        for module in MODULES
        for target, name, line in _imports(module)
        if name.startswith("_") and not name.startswith("__") and target != module
    ]
    assert not crossings, "; ".join(crossings)


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's lines as ruff formats them, less its docstring: a long explanation is not a long function."""
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def test_every_function_is_short():
    long = [
        f"{module}.{node.name} ({_code_lines(node)} lines)"
        for module, tree in MODULES.items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(node) > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines of code (docstring not counted): " + ", ".join(long)


def _subcommands():
    from protolib.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # argparse keeps sub-parsers only here
    return sub.choices


def test_every_subcommand_takes_config_and_set():
    for name, command in _subcommands().items():
        options = {flag for action in command._actions for flag in action.option_strings}
        assert {"--config", "--set"} <= options, name


def test_every_option_that_sets_a_configuration_key_names_a_real_one_of_its_type():
    import typing

    from protolib.cli.common import SETTING_PREFIX
    from protolib.config import SECTION_TYPES, setting_type

    checked = 0
    for name, command in _subcommands().items():
        for action in command._actions:
            if not action.dest.startswith(SETTING_PREFIX):
                continue
            section, *parts = action.dest[len(SETTING_PREFIX) :].split(".")
            cls = SECTION_TYPES[section]
            for part in parts:
                cls = setting_type(cls, part)
            allowed = {t for t in typing.get_args(cls)} or {cls}
            if action.type in (int, float):
                assert action.type in allowed or (action.type is int and float in allowed), (
                    f"{name} {action.option_strings}: {cls}"
                )
            checked += 1
    assert checked >= 30


def test_every_configuration_field_says_what_it_is():
    """Each setting of the configuration tree carries its unit and reason as a comment, where it is defined."""
    import dataclasses

    from protolib.config import SECTION_TYPES, load_config, setting_help, setting_type

    def keys(cls, prefix):
        for field in dataclasses.fields(cls):
            kind = setting_type(cls, field.name)
            yield from (
                keys(kind, f"{prefix}.{field.name}") if dataclasses.is_dataclass(kind) else [f"{prefix}.{field.name}"]
            )

    every = [key for section, cls in SECTION_TYPES.items() for key in keys(cls, section)]
    assert len(every) > 80 and not [key for key in every if not setting_help(key)]
    tree = load_config("default")
    assert (
        tree.matching.top_k == 200
        and tree.siamese.training.epochs == 30
        and tree.autoencoder.images["stretch"] == "asinh"
    )
