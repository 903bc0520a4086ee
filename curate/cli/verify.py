"""`prefcurate verify`: check every table of a dataset against the manifests that committed it."""
from __future__ import annotations

import typer

from curate.cli.common import DatasetArg, print_counts
from curate.cli.output import fail_with_summary, json_summary


@json_summary
def verify(dataset: DatasetArg) -> None:
    """Re-hash every table file and compare it with its stage's manifest: names, rows, SHA-256 and schema.

    Also reports files no manifest lists (a killed run, a stray copy). Exit status 1 when anything
    differs, each problem on one line with the command that rebuilds the table. Changes nothing but
    its record of checked files (.verified.json): run it on a dataset you were given before using it.
    """
    from curate.progress import progress_bars
    from curate.verify import verify_dataset

    with progress_bars() as update:
        started: list[str] = []

        def next_table(table: str, count: int) -> None:
            update("verify", len(started), count, note=f"hashing {table}")
            started.append(table)

        checks, problems = verify_dataset(dataset, on_table=next_table)
        update("verify", len(started), len(started))
    rows = [(c.table, f"{c.rows:,} rows in {c.files} files" + (f", {len(c.problems)} problems" if c.problems else ""))
            for c in checks]
    print_counts(f"verify {dataset}", rows or [("tables", "none")])
    problems += [p for c in checks for p in c.problems]
    for problem in problems:
        typer.secho(f"problem: {problem}", fg=typer.colors.RED, err=True)
    summary = {"dataset": str(dataset), "problems": problems,
               "tables": {c.table: {"files": c.files, "rows": c.rows, "problems": c.problems} for c in checks}}
    if problems:
        fail_with_summary(f"{len(problems)} problems in {dataset}; use nothing there until they are fixed", summary)
    typer.echo(f"{dataset}: every table matches its manifest")
    return summary
