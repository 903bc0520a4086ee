"""Fuzz ingest: malformed files of every format, intact and with byte-level damage; no traceback allowed.

    python benchmarks/fuzz_ingest.py                   # 10,000 malformed records, then the same files damaged
    python benchmarks/fuzz_ingest.py --records 2000 --seed 3

Every format of `curate.synth.malformed.FUZZ_FORMATS` gets files of 50-300 records whose cells are
good or malformed at random (every column type: text, image bytes and references, labels, votes,
annotators, times), written by `write_fuzz_file`. Each file is ingested as written, then once more
after `corrupt_bytes` damaged it (flipped bytes, a cut, an inserted or zeroed block, a Latin-1
byte). An outcome is either a clean refusal (one line naming the file) or a run in which every
record the reader saw is accounted for exactly once as pairs and rejects whose counts reconcile.
Anything else raised is a crash. Prints the tallies and writes them as JSON (--json).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import traceback
from collections import Counter
from pathlib import Path

import numpy as np


def fuzz(records: int, seed: int, work: Path) -> dict:
    from curate.synth.malformed import FUZZ_FORMATS, corrupt_bytes, ingest_outcome, write_fuzz_file

    rng = np.random.default_rng(seed)
    tally: dict[str, Counter] = {"intact": Counter(), "damaged": Counter()}
    reasons: Counter = Counter()
    crashes: list[str] = []
    written, k = 0, 0
    while written < records:
        fmt = FUZZ_FORMATS[k % len(FUZZ_FORMATS)]
        rows = int(min(rng.integers(50, 300), max(1, records - written)))
        path, ingest_format, n = write_fuzz_file(work, fmt, rows, rng)
        written += n
        for kind in ("intact", "damaged"):
            if kind == "damaged":
                path.write_bytes(corrupt_bytes(path.read_bytes(), rng))
            try:
                outcome = ingest_outcome(path, ingest_format, work / f"ds-{k}-{kind}", work)
            except Exception:  # the one thing that must never happen
                crashes.append(f"{fmt} {kind} {path.name}: {traceback.format_exc(limit=-2)}")
                continue
            t = tally[kind]
            t["files"] += 1
            if "refused" in outcome:
                t["refused_one_line" if outcome["one_line"] else "refused_not_one_line"] += 1
                continue
            t["records"] += outcome["records"]
            t["accepted"] += outcome["accepted"]
            t["rejected"] += sum(outcome["reasons"].values())
            t["accounted_files" if outcome["accounted"] else "unaccounted_files"] += 1
            if kind == "intact":
                reasons.update(outcome["reasons"])
        k += 1
    return {"seed": seed, "records_written": written, "intact": dict(tally["intact"]),
            "damaged": dict(tally["damaged"]), "reject_reasons_intact": dict(reasons.most_common()),
            "crashes": len(crashes), "crash_details": crashes[:5]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000, help="malformed records to write across all formats")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the tallies here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fuzz-ingest-"))
    try:
        result = fuzz(args.records, args.seed, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
