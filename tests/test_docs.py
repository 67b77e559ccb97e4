"""Every command has help with an Example block and is documented in docs/*.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import pytest

from selfevo.cli import cli as root

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _walk(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """``(command path, command)`` for every registered command, recursively.

    A command that fails to load is kept as its exception, so only its own tests fail.
    """
    ctx = click.Context(group, info_name="selfevo")
    found: list[tuple[str, Any]] = []
    for name in group.list_commands(ctx):
        full = " ".join((*path, name))
        try:
            cmd = group.get_command(ctx, name)
        except Exception as exc:  # a module mid-edit by its owner: report, don't abort
            found.append((full, exc))
            continue
        found.append((full, cmd))
        if isinstance(cmd, click.Group):
            found.extend(_walk(cmd, (*path, name)))
    return found


COMMANDS = _walk(root)
IDS = [name for name, _ in COMMANDS]


def _docs_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(DOCS.glob("*.md")))


def test_the_tree_has_the_store_commands():
    for name in ["init", "prompts import", "prompts generate", "records import", "sql",
                 "stats", "show"]:
        assert name in IDS


@pytest.mark.parametrize("name, command", COMMANDS, ids=IDS)
def test_command_has_help_with_an_example(name, command):
    assert isinstance(command, click.Command), f"selfevo {name} does not load: {command!r}"
    help_text = command.help or ""
    assert help_text.strip(), f"selfevo {name} has no help text"
    assert re.search(r"^\s*Examples?:", help_text, re.M), (
        f"selfevo {name}: the help must end with an 'Example:' block (preceded by \\b)")


@pytest.mark.parametrize("name, command", COMMANDS, ids=IDS)
def test_command_is_documented(name, command):
    assert isinstance(command, click.Command), f"selfevo {name} does not load: {command!r}"
    pattern = re.compile(rf"selfevo {re.escape(name)}(?![\w-])")
    assert pattern.search(_docs_text()), (
        f"'selfevo {name}' appears in no docs/*.md page; document it")
