"""Documentation: every command of both CLIs explains itself, and the README covers the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import click
import onnx
import pytest
from click.testing import CliRunner

from edgevae.runtime import contract
from edgevae.runtime.cli import main as runtime_cli
from edgevae.training.cli import main as training_cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

#: The commands issue 2 asks of ``edgevae``.
RUNTIME_COMMANDS = ("info", "sample", "reconstruct", "interpolate", "encode", "decode")

CLIS = {"edgevae": runtime_cli, "edgevae-train": training_cli}
ALL_COMMANDS = [(name, command) for name, group in CLIS.items() for command in sorted(group.commands)]


def test_edgevae_has_the_issue_commands() -> None:
    assert set(RUNTIME_COMMANDS) <= set(runtime_cli.commands)
    assert {"train", "evaluate", "export"} <= set(training_cli.commands)


@pytest.mark.parametrize("cli", CLIS)
def test_group_help(cli: str) -> None:
    group = CLIS[cli]
    assert group.help and group.help.strip()
    result = CliRunner().invoke(group, ["--help"])
    assert result.exit_code == 0
    for command in group.commands:
        assert command in result.stdout


@pytest.mark.parametrize("cli, command", ALL_COMMANDS)
def test_every_command_has_help(cli: str, command: str) -> None:
    cmd = CLIS[cli].commands[command]
    assert cmd.help and cmd.help.strip(), f"{cli} {command} has no help text"
    assert cmd.get_short_help_str().strip()
    result = CliRunner().invoke(CLIS[cli], [command, "--help"])
    assert result.exit_code == 0 and result.stdout.startswith("Usage:")
    first_line = cmd.help.strip().splitlines()[0]
    assert " ".join(first_line.split()) in " ".join(result.stdout.split())  # click re-wraps the text


@pytest.mark.parametrize("cli, command", ALL_COMMANDS)
def test_every_option_has_help(cli: str, command: str) -> None:
    cmd = CLIS[cli].commands[command]
    bare = [p.opts[0] for p in cmd.params if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert bare == [], f"{cli} {command}: options without help text"


def _readme_command_lines() -> list[str]:
    """The lines of README's code blocks, stripped (a shell prompt ``$ `` dropped)."""
    blocks = re.findall(r"```[^\n]*\n(.*?)```", README.read_text(), re.S)
    return [line.strip().removeprefix("$ ") for block in blocks for line in block.splitlines()]


def test_readme_has_an_example_of_every_listed_edgevae_command() -> None:
    """Every command that ``edgevae --help`` lists (read from the click group, so a new command is
    covered without editing this test) is run by a line of a README code block."""
    assert README.is_file(), "README.md is missing"
    listed = runtime_cli.list_commands(click.Context(runtime_cli))
    assert set(RUNTIME_COMMANDS) <= set(listed)
    lines = _readme_command_lines()
    missing = [c for c in listed if not any(re.match(rf"edgevae {re.escape(c)}(\s|$)", line) for line in lines)]
    assert missing == [], f"README has no example of: {', '.join(f'edgevae {c}' for c in missing)}"


def test_readme_lists_the_operators_the_graphs_use(tiny_bundle: Path) -> None:
    """The README's operator list (for people porting the graphs) names every operator used."""
    assert README.is_file(), "README.md is missing"
    match = re.search(r"[Oo]perators used:(.*?)\.(?:\s|$)", README.read_text(), re.S)
    assert match, "README.md has no 'operators used:' list"
    listed = set(re.findall(r"[A-Za-z]+", match.group(1)))
    from edgevae.runtime.bundle import shipped_bundles

    used = set()
    for folder in (tiny_bundle, *shipped_bundles().values()):  # both decoder styles, int8's QDQ
        for spec in contract.GRAPHS:
            used |= {node.op_type for node in onnx.load(str(folder / spec.file)).graph.node}
    assert sorted(used - listed) == []
