"""Declarative pipelines: a TOML file that chains prefcurate commands with their options.

    [pipeline]
    name = "demo"
    dataset = "{out}/dataset"          # the dataset directory every stage works on

    [params]                            # defaults; override with `prefcurate run FILE --param out=elsewhere`
    out = "demo_out"

    [[stage]]
    command = "ingest"                  # any prefcurate command
    sources = ["{out}/world/pickapic"]  # its arguments and options, by their long names
    format = "pickapic"

Each stage runs the very command a person would type (same parsing, same checks, same errors),
with the dataset directory filled in. Stages whose last run finished under the same fingerprint
(config and inputs) are skipped, so a rerun after a failure or an edit redoes only what changed.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

_PARAM = re.compile(r"\{(\w+)\}")

# The command that makes the dataset directory takes it as --out; the others take it as their
# positional argument named "dataset" (or "dataset_dir": the pipeline file calls it dataset).
TAKES_OUT = {"ingest"}
DATASET_ARGUMENTS = ("dataset", "dataset_dir")


class PipelineError(ValueError):
    """A pipeline file that cannot be run as written: names the file, the stage and the fix."""


@dataclass
class Step:
    command: str
    argv: list[str]
    where: str


@dataclass
class Pipeline:
    name: str
    dataset: Path
    steps: list[Step] = field(default_factory=list)


def _substitute(value, params: dict[str, str], where: str):
    if isinstance(value, str):
        def repl(match):
            if match.group(1) not in params:
                raise PipelineError(f"{where}: unknown parameter {{{match.group(1)}}}; declare it under [params] "
                                    f"or pass --param {match.group(1)}=VALUE")
            return str(params[match.group(1)])

        return _PARAM.sub(repl, value)
    if isinstance(value, list):
        return [_substitute(v, params, where) for v in value]
    return value


def _option(name: str, value) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if value is True:
        return [flag]
    if value is False:
        return [f"--no-{name.replace('_', '-')}"]
    if isinstance(value, list):
        return [part for v in value for part in (flag, str(v))]
    return [flag, str(value)]


def load(path: Path, overrides: dict[str, str] | None = None,
         positionals: dict[str, list[str]] | None = None) -> Pipeline:
    """Parse and check a pipeline file; ``overrides`` replace [params] values. ``positionals``: each
    command's positional argument names, in order (curate.cli.run.positionals reads them from the
    commands); without it, the file's commands are not checked and every key is an --option."""
    try:
        spec = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PipelineError(f"{path}: cannot read the pipeline ({exc})") from None
    params = {k: str(v) for k, v in spec.get("params", {}).items()}
    unknown = sorted(set(overrides or {}) - set(params))
    if unknown:
        raise PipelineError(f"{path}: --param {unknown} not declared under [params] (declared: {sorted(params)})")
    params.update(overrides or {})
    head = spec.get("pipeline", {})
    if "dataset" not in head:
        raise PipelineError(f"{path}: [pipeline] needs dataset = \"DIR\" (the dataset directory the stages share)")
    dataset = Path(_substitute(head["dataset"], params, f"{path} [pipeline]"))
    pipeline = Pipeline(name=head.get("name", Path(path).stem), dataset=dataset)
    for i, stage in enumerate(spec.get("stage", []), 1):
        where = f"{path} stage {i}"
        options = {k: _substitute(v, params, where) for k, v in stage.items()}
        pipeline.steps.append(_step(options, dataset, positionals, where))
    if not pipeline.steps:
        raise PipelineError(f"{path}: no [[stage]] entries")
    return pipeline


def _step(options: dict, dataset: Path, positionals: dict[str, list[str]] | None, where: str) -> Step:
    """One stage's command line: its positional arguments in the command's order, then its options."""
    command = options.pop("command", None)
    if command is None or (positionals is not None and command not in positionals):
        raise PipelineError(f"{where}: command {command!r} is not a prefcurate command; expected one of "
                            f"{sorted(positionals or {})}")
    if command in TAKES_OUT:
        options.setdefault("out", str(dataset))
    argv = [command]
    for name in (positionals or {}).get(command, []):
        key = "dataset" if name in DATASET_ARGUMENTS else name
        if key == "dataset":
            options.setdefault("dataset", str(dataset))
        if key not in options:
            raise PipelineError(f"{where}: `{command}` needs {key} = ...")
        value = options.pop(key)
        argv += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    for name, value in options.items():
        argv += _option(name, value)
    return Step(command=command, argv=argv, where=where)
