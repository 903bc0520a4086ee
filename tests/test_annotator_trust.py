"""Voter trust scores (``annotator_trust`` in the pairs table, where a dataset carries them) as the
prior on each person's membership of the random component."""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from typer.testing import CliRunner

from curate.annotators import tastes as tm
from curate.cli import app
from curate.dataset import Dataset, WrittenShard, file_sha256
from curate.synth.world import WorldConfig, build_world
from curate.verify import commit_files

runner = CliRunner()


def test_membership_prior_by_hand():
    share = np.array([0.6, 0.2, 0.2])  # two tastes and random
    prior = tm.membership_prior(share, np.array([0.9, 0.0, np.nan]))
    np.testing.assert_allclose(prior[0], [0.675, 0.225, 0.1])  # the tastes split 0.9 as 3:1
    np.testing.assert_allclose(prior[1], [0.0, 0.0, 1.0])  # no trust at all: a random clicker
    np.testing.assert_allclose(prior[2], share)  # unknown: the people share
    assert tm.membership_prior(share, None) is share


def test_trust_moves_the_memberships_by_hand():
    # one person, one judgement at log-likelihoods (log 0.8, log 0.5): posterior taste ~ prior x likelihood
    data = tm.Judgements(np.array([0]), np.array([1]), np.array([0]), 2, 1, trust=np.array([0.2]))
    resp, _ = tm.memberships(np.log(np.array([[0.8, 0.5]])), data, np.array([0.5, 0.5]))
    assert resp[0, 0] == pytest.approx(0.2 * 0.8 / (0.2 * 0.8 + 0.8 * 0.5))


def _with_trust(root, out, trust_of: dict[str, float]) -> None:
    """The world's pairs with an annotator_trust column, as a dataset of its own (committed)."""
    pairs = Dataset(root / "ds").read_table("pairs")
    trust = [trust_of.get(a) for a in pairs["annotator_id"].to_pylist()]
    column = pa.array(trust, pa.float64())
    if "annotator_trust" in pairs.column_names:  # pairs v2 carry it (null where the source gives none)
        pairs = pairs.set_column(pairs.schema.get_field_index("annotator_trust"), "annotator_trust", column)
    else:
        pairs = pairs.append_column("annotator_trust", column)
    path = out / "tables" / "pairs" / "ingest-00000.arrow"
    path.parent.mkdir(parents=True)
    with ipc.new_file(path, pairs.schema) as writer:
        writer.write_table(pairs)
    commit_files(out, "test", {"pairs": [WrittenShard(path.name, pairs.num_rows, file_sha256(path))]})


def test_the_annotators_stage_reads_trust_when_the_pairs_carry_it(tmp_path):
    root = tmp_path / "world"
    build_world(root, WorldConfig(pairs=800, seed=5, minority_rate=0.2, formats=("pickapic",)))
    assert runner.invoke(app, ["ingest", str(root / "pickapic"), "-f", "pickapic", "-o", str(root / "ds")]).exit_code == 0
    types = pl.read_parquet(root / "truth" / "annotators.parquet")
    artsy = types.filter(pl.col("type") == "minority_artsy")["annotator_id"].to_list()
    trust = {a: 1.0 for a in types["annotator_id"].to_list()} | {a: 0.0 for a in artsy}
    _with_trust(root, tmp_path / "trusted", trust)
    result = runner.invoke(app, ["annotators", str(tmp_path / "trusted")])
    assert result.exit_code == 0, result.output
    people = Dataset(tmp_path / "trusted").scan("annotators").collect()
    untrusted = people.filter(pl.col("annotator_id").is_in(artsy))
    assert (untrusted["taste_group"] == "random").all()  # trust 0: judges by no taste
    trusted = people.filter(~pl.col("annotator_id").is_in(artsy))
    assert (trusted["memberships"].list.last() < 1e-6).all()  # trust 1: never a random clicker

    _with_trust(root, tmp_path / "bad", {artsy[0]: 1.5})
    result = runner.invoke(app, ["annotators", str(tmp_path / "bad")])
    assert result.exit_code != 0
    assert "annotator_trust 1.5" in result.output and "outside [0, 1]" in result.output
    assert "Traceback" not in result.output
