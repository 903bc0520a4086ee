"""The `prefcurate` command: one Typer app, each command defined in its own module.

Command modules import only typer and the standard library at top level (heavy imports happen
inside the command body), so `prefcurate --help` stays instant.
"""
from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="prefcurate",
    help="Curate pairwise human-preference data for text-to-image models and train them with Adaptive-DPO.",
    no_args_is_help=True,
    # Plain click help: it wraps long option names and help text at any width, where rich's panels
    # cut them (`--checkpoint-e…` at 80 columns).
    rich_markup_mode=None,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

# (command name, "module:function") for single commands; (group name, "module:app") for groups.
COMMANDS: list[tuple[str, str]] = [
    ("run", "curate.cli.run:run"),
    ("ingest", "curate.cli.ingest:ingest"),
    ("annotators", "curate.cli.annotators:annotators"),
    ("flag", "curate.cli.annotators:flag"),
    ("encode", "curate.cli.train:encode"),
    ("train", "curate.cli.train:train"),
    ("sample", "curate.cli.train:sample"),
    ("demo-data", "curate.cli.demo_data:demo_data"),
    ("embed", "curate.cli.embed:embed"),
    ("filter", "curate.cli.filter:filter_pairs"),
    ("export", "curate.cli.publish:export"),
    ("publish", "curate.cli.publish:publish"),
    ("report", "curate.cli.report:report"),
    ("evaluate", "curate.cli.evaluate:evaluate"),
    ("verify", "curate.cli.verify:verify"),
]
GROUPS: list[tuple[str, str]] = [
    ("scores", "curate.cli.scores:app"),
]


def _resolve(target: str):
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


for _name, _target in COMMANDS:
    app.command(_name)(_resolve(_target))
for _name, _target in GROUPS:
    app.add_typer(_resolve(_target), name=_name)


def _print_version(value: bool) -> None:
    # A parameter callback runs while the options are parsed, before click asks for a command.
    if value:
        from curate import __version__

        typer.echo(f"prefcurate {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version, expose_value=False),
) -> None:
    """Curate pairwise human-preference data for text-to-image models and train them with Adaptive-DPO."""


def main() -> None:
    app()
