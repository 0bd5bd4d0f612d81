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


def _set_example(parser: argparse.ArgumentParser) -> str | None:
    for action in parser._actions:
        if "--set" in action.option_strings:
            return action.help.split("e.g. --set ", 1)[1].split()[0]
    return None


def _config_loaders():
    """For each command that takes `--set`: its config as the command loads it, from overrides
    (the default or named config the command is most often run with)."""
    from gencast_rmmd.cli import quickstart_chain
    from gencast_rmmd.cli import teacher as teacher_cli
    from gencast_rmmd.config import load_config, to_dict
    from gencast_rmmd.data.config import load_data_config
    from gencast_rmmd.distill.gencast import DistillConfig
    from gencast_rmmd.image.config import ImageConfig

    def teacher(o):
        return to_dict(teacher_cli.model_config("tiny", o)), to_dict(teacher_cli.training_config(o))

    def image(o):
        return to_dict(load_config(ImageConfig, "digits", o, kind="image"))

    return {
        ("teacher", "train"): teacher,
        ("distill",): lambda o: to_dict(
            load_config(DistillConfig, "rmmd_gencast", o, kind="distill")
        ),
        ("quickstart",): lambda o: to_dict(quickstart_chain.load_profile("default", o)),
        ("data", "nature-run"): lambda o: to_dict(load_data_config("embedded", o)),
        ("data", "prepare"): lambda o: to_dict(load_data_config("gencast_1p0deg", o)),
        ("data", "validate"): lambda o: to_dict(load_data_config("gencast_1p0deg", o)),
        ("image", "teacher"): image,
        ("image", "distill"): image,
        ("image", "pareto"): image,
    }


def test_every_set_example_in_help_is_a_key_of_that_commands_config():
    """The `--set` example in each command's help loads with that command's config and changes
    it (it once showed `optimizer.learning_rate`, a key of no quickstart or distill config)."""
    examples = {
        words: ex for words, p in _commands(build_parser()) if (ex := _set_example(p)) is not None
    }
    loaders = _config_loaders()
    assert set(examples) == set(loaders), sorted(set(examples) ^ set(loaders))
    for words, example in examples.items():
        assert loaders[words]([example]) != loaders[words]([]), (words, example)
