"""Every command's `--help` says what it does and what each of its options is."""

from __future__ import annotations

import argparse

from gencast_rmmd.cli import build_parser


def _commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    """(words, parser) of every command and command group under `parser`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*words, name), sub
                yield from _commands(sub, (*words, name))


def test_every_command_describes_itself_and_its_options():
    commands = dict(_commands(build_parser()))
    assert len(commands) >= 18, sorted(commands)  # 7 areas and their sub-commands
    for words, parser in commands.items():
        assert parser.description, f"`gencast-rmmd {' '.join(words)} --help` has no description"
        for action in parser._actions:
            if action.option_strings and action.help != argparse.SUPPRESS:
                assert action.help, f"{' '.join(words)} {action.option_strings[0]} has no help"
