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

# The positional arguments of each command, in order; everything else is an --option.
POSITIONAL = {
    "demo-data": ["out_dir"], "ingest": ["sources"], "annotators": ["dataset"], "flag": ["dataset"],
    "embed": ["dataset"], "filter": ["dataset"], "encode": ["dataset"], "train": ["dataset"],
    "report": ["dataset"], "export": ["dataset", "out"],
}
# Commands that take the pipeline's dataset directory as their first argument, or as --out.
TAKES_DATASET = {"annotators", "flag", "embed", "filter", "encode", "train", "report", "export"}
TAKES_OUT = {"ingest"}


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


def load(path: Path, overrides: dict[str, str] | None = None, known_commands: set[str] | None = None) -> Pipeline:
    """Parse and check a pipeline file; ``overrides`` replace [params] values."""
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
        command = options.pop("command", None)
        if command is None or (known_commands is not None and command not in known_commands):
            raise PipelineError(f"{where}: command {command!r} is not a prefcurate command; expected one of "
                                f"{sorted(known_commands or POSITIONAL)}")
        if command in TAKES_DATASET:
            options.setdefault("dataset", str(dataset))
        if command in TAKES_OUT:
            options.setdefault("out", str(dataset))
        argv = [command]
        for name in POSITIONAL.get(command, []):
            if name not in options:
                raise PipelineError(f"{where}: `{command}` needs {name} = ...")
            value = options.pop(name)
            argv += [str(v) for v in value] if isinstance(value, list) else [str(value)]
        for name, value in options.items():
            argv += _option(name, value)
        pipeline.steps.append(Step(command=command, argv=argv, where=where))
    if not pipeline.steps:
        raise PipelineError(f"{path}: no [[stage]] entries")
    return pipeline
