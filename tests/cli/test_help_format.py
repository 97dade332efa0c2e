"""Every command's --help fits the terminal: prose is wrapped, examples keep their columns."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from zmqcomm.cli.help_format import HelpFormatter
from zmqcomm.cli.main import build_parser

WIDTH = 80


def _commands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield from _commands(sub)


def _help_at(monkeypatch: pytest.MonkeyPatch, width: int) -> dict[str, str]:
    monkeypatch.setenv("COLUMNS", str(width))
    return {sub.prog: sub.format_help() for sub in _commands(build_parser())}


def test_every_command_wraps_its_prose_to_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    helps = _help_at(monkeypatch, WIDTH)
    assert len(helps) > 15  # the walk found the subcommands
    too_long = [
        f"{prog}: {line}"
        for prog, text in helps.items()
        for line in text.splitlines()
        if len(line) > WIDTH and not line[:1].isspace()
    ]
    assert too_long == []


def test_every_command_uses_the_formatter(monkeypatch: pytest.MonkeyPatch) -> None:
    parsers = list(_commands(build_parser()))
    assert [p.prog for p in parsers if p.formatter_class is not HelpFormatter] == []


def test_examples_keep_their_lines_and_prose_keeps_its_words() -> None:
    parser = argparse.ArgumentParser(
        prog="demo",
        description="word " * 40,
        epilog="examples:\n  demo --one          the first\n  demo --two   second\n\ntail",
        formatter_class=HelpFormatter,
    )
    text = parser.format_help()
    assert "  demo --one          the first\n  demo --two   second\n" in text
    description = text.split("\n\n")[1]
    assert description.split() == ["word"] * 40
    assert max(len(line) for line in description.splitlines()) < len("word " * 40)
