"""The quick start stays runnable: its commands are the README's and the command line's.

``book/quickstart.md`` is not executed when the book is built, so nothing else would notice an option
renamed under it or the README's two commands changing.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from protolib.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "book" / "quickstart.md"
COMMANDS = ("match", "bank-for")


def code_lines(text: str) -> list[str]:
    """The lines of the Markdown text's ```bash blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def options_of(command: str, capsys) -> set[str]:
    """The long options ``protolib COMMAND --help`` lists."""
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    return set(re.findall(r"--[a-z][a-z-]*", capsys.readouterr().out))


def test_the_two_commands_are_the_readmes():
    readme = set(code_lines((ROOT / "README.md").read_text()))
    make_lines = [line for line in code_lines(QUICKSTART.read_text()) if line.startswith("make ")]
    assert [line.split()[:2] for line in make_lines] == [["make", "book"], ["make", "test"]]
    assert set(make_lines) <= readme, "book/quickstart.md's make lines differ from the README's"


def test_its_protolib_commands_parse():
    commands = [line for line in code_lines(QUICKSTART.read_text()) if line.startswith("protolib ")]
    assert {shlex.split(line)[1] for line in commands} == set(COMMANDS)
    for line in commands:
        build_parser().parse_args(shlex.split(line)[1:])


def test_every_option_it_names_exists(capsys):
    known = set().union(*(options_of(command, capsys) for command in COMMANDS))
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", QUICKSTART.read_text()))
    assert named and not named - known, (
        f"options named in book/quickstart.md that match and bank-for lack: {sorted(named - known)}"
    )
