"""The import directions README's architecture paragraph states, checked on every import (lazy ones too)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "curate"

# What each package may import besides the core (curate/*.py modules, which import no package);
# the CLI may import everything.
MAY_IMPORT = {
    "core": set(),
    "ingest": set(),
    "synth": {"ingest"},
    "annotators": {"ingest"},
    "clip": {"synth"},
    "scorers": {"clip", "synth"},
    "train": set(),
    "evaluation": {"clip", "scorers", "synth", "train"},
    "report": {"annotators"},
    "publish": {"report"},
}


def layer(module: str) -> str:
    """'core' for curate.X where X is a module, else the package X."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else "core"


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"curate.{a.name}" for a in node.names] if node.module == "curate" else [node.module]
            found += [(node.lineno, n) for n in names]
    return [(line, name) for line, name in found if name.startswith("curate.")]


def violations(path: Path, module: str) -> list[str]:
    """``file:line imports X`` for each import of ``path`` (as module ``module``) against MAY_IMPORT."""
    here = layer(module)
    if here == "cli":
        return []
    allowed = MAY_IMPORT[here] | {here, "core"}
    return [f"{path}:{line}: {here} imports {name} ({layer(name)}); it may import {sorted(allowed)}"
            for line, name in imported_modules(ast.parse(path.read_text())) if layer(name) not in allowed]


def test_every_import_goes_the_stated_way():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 100
    found = []
    for path in files:
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found += violations(path, module)
    assert not found, "\n".join(found)
    data = {"assets", "schemas"}  # folders of files the package ships, not code
    assert set(MAY_IMPORT) | {"cli"} | data >= {p.name for p in PACKAGE.iterdir() if p.is_dir()} - {"__pycache__"}


def test_the_check_catches_an_import_against_the_direction(tmp_path):
    report = tmp_path / "html.py"
    report.write_text("def f():\n    from curate.publish.card import render_card\n    from curate.funnel import funnel\n")
    assert violations(report, "curate.report.html") == [
        f"{report}:2: report imports curate.publish.card (publish); it may import ['annotators', 'core', 'report']"]
    core = tmp_path / "funnel.py"
    core.write_text("import curate.train.loop\n")
    assert len(violations(core, "curate.funnel")) == 1
