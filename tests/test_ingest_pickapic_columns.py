"""Pick-a-Pic ingest decodes only the columns the checks read; a rejected row's JSON still has every
column of its own row, and the batches (hence the output files) do not change."""
from __future__ import annotations

import json

import pyarrow.parquet as pq

from curate.dataset import Dataset
from curate.ingest import pickapic
from curate.ingest.stage import IngestStage
from curate.runner import run_stage
from ingest_data import write_pickapic


def test_rejected_rows_carry_the_columns_the_checks_skip(tmp_path):
    path, bad = write_pickapic(tmp_path / "raw", row_group_size=20)  # one group, several batches
    run_stage(IngestStage(files=[str(path)], format="pickapic", batch_rows=3), tmp_path / "ds")
    rejects = Dataset(tmp_path / "ds").read_table("rejects").to_pylist()
    assert {r["source_row"] for r in rejects} == set(bad)
    file_columns = set(pq.ParquetFile(path).schema_arrow.names)
    assert file_columns - set(pickapic.USED), "the test needs columns the checks do not read"
    for reject in (r for r in rejects if r["reason"] != "duplicate_row"):  # those describe the stored pair
        row = json.loads(reject["row"])
        assert set(row) == file_columns
        assert row["ranking_id"] == reject["source_row"]  # the row's own values, not its batch's first


def test_reading_rejected_rows_keeps_the_batches_of_the_group(tmp_path):
    path, _ = write_pickapic(tmp_path / "raw", row_group_size=20)
    spec = pickapic.plan(path, shard_rows=100)[0]
    sizes = []
    for cand, raw_row in pickapic.read(spec, batch_rows=3):
        raw_row(0)  # decodes the skipped columns of the group
        sizes.append(cand.num_rows)
    assert sizes == [b.num_rows for b in pq.ParquetFile(path).iter_batches(batch_size=3)] and len(sizes) > 2
