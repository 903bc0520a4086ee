"""Annotators, consensus and minority flags, from the CLI, on real files of the synthetic world."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy.stats import rankdata
from typer.testing import CliRunner

from curate.cli import app
from curate.dataset import Dataset
from curate.synth.world import WorldConfig, build_world
from ingest_data import write_table

runner = CliRunner()


def cli(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def auroc(score: np.ndarray, truth: np.ndarray) -> float:
    keep = ~np.isnan(score)
    score, truth = score[keep], truth[keep]
    ranks = rankdata(score)
    pos = truth.sum()
    return (ranks[truth].sum() - pos * (pos + 1) / 2) / (pos * (len(truth) - pos))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    build_world(root, WorldConfig(pairs=1500, seed=3, minority_rate=0.2, formats=("pickapic", "multivote")))
    cli("ingest", str(root / "pickapic"), "-f", "pickapic", "-o", str(root / "ds"))
    return root


def truth_join(root, table: str) -> pl.DataFrame:
    truth = pl.read_parquet(root / "truth" / "pairs.parquet").select("pair_id", pl.col("is_minority").alias("truth"))
    return Dataset(root / "ds").scan(table).collect().join(truth, on="pair_id")


def test_flags_find_the_planted_minority(world):
    out = cli("annotators", str(world / "ds"))
    assert "Bradley-Terry" in out
    out = cli("flag", str(world / "ds"))
    assert "flagged as minority" in out
    scored = truth_join(world, "pair_scores")
    truth = scored["truth"].to_numpy()
    combined = auroc(scored["minority_score"].cast(pl.Float64).fill_null(np.nan).to_numpy(), truth)
    # Without any scorer the human side alone (reliability x Bradley-Terry) separates minority labels well.
    assert combined > 0.85, combined
    flagged = scored.filter(pl.col("is_minority"))
    assert flagged["truth"].mean() > 2 * truth.mean()  # flags are far richer in minority labels than chance
    assert all(len(r) > 0 for r in flagged["reasons"].to_list())  # every flag says why
    assert scored.filter(~pl.col("is_minority"))["reasons"].list.len().max() == 0


def test_annotator_table_is_complete_and_shrunk(world):
    cli("annotators", str(world / "ds"))
    people = Dataset(world / "ds").read_table("annotators").to_pandas()
    pairs = Dataset(world / "ds").read_table("pairs", ["annotator_id"]).to_pandas()
    assert people["judgements"].sum() == len(pairs)
    few = people[people["judgements"] <= 3]
    assert len(few) and (few["verdict"] == "undecided").all()  # 3 judgements never decide reliability
    assert ((people["reliability_low"] <= people["reliability"]) & (people["reliability"] <= people["reliability_high"])).all()


def test_explain_names_the_numbers(world):
    cli("annotators", str(world / "ds"))
    cli("flag", str(world / "ds"))
    flagged = Dataset(world / "ds").scan("pair_scores").filter(pl.col("is_minority")).collect()["pair_id"][0]
    out = cli("flag", str(world / "ds"), "--explain", flagged)
    assert "FLAGGED" in out and "Adaptive-DPO metric" in out and "reliability" in out
    bad = runner.invoke(app, ["flag", str(world / "ds"), "--explain", "nope"])
    assert bad.exit_code == 2 and "no pair 'nope'" in bad.output


def test_quantile_flags_the_top_share(world):
    cli("annotators", str(world / "ds"))
    cli("flag", str(world / "ds"), "--quantile", "0.1")
    scores = Dataset(world / "ds").read_table("pair_scores").to_pandas()
    decided = scores["minority_score"].notna()
    assert abs(scores["is_minority"][decided].mean() - 0.1) < 0.02


def test_scores_import_adds_a_signal_and_u(world, tmp_path):
    truth = pl.read_parquet(world / "truth" / "pairs.parquet")
    rng = np.random.default_rng(0)
    noisy = lambda c: pl.col(c) + pl.Series(rng.normal(0, 0.2, truth.height))  # noqa: E731
    truth.select("pair_id", score_a=noisy("fidelity_a"), score_b=noisy("fidelity_b")).write_csv(tmp_path / "s.csv")
    out = cli("scores", "import", str(tmp_path / "s.csv"), "--scorer", "pickscore-like", "-d", str(world / "ds"))
    assert "scores stored" in out
    cli("annotators", str(world / "ds"))
    cli("flag", str(world / "ds"))
    scored = truth_join(world, "pair_scores")
    assert scored["signals"].max() >= 2 and scored["u"].drop_nulls().len() > 0
    consensus = Dataset(world / "ds").read_table("consensus").to_pandas()
    assert consensus["source"].str.contains("scorers").mean() > 0.9
    assert auroc(scored["minority_score"].cast(pl.Float64).fill_null(np.nan).to_numpy(), scored["truth"].to_numpy()) > 0.88
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,2\n")
    result = runner.invoke(app, ["scores", "import", str(bad), "--scorer", "x", "-d", str(world / "ds")])
    assert result.exit_code == 2 and "fit neither layout" in result.output


def test_multivote_rows_are_their_own_consensus(world, tmp_path):
    out = tmp_path / "mv"
    cli("ingest", str(world / "multivote" / "train.parquet"), "-f", "table", "-o", str(out),
        "--map", "image_a=image1", "--map", "image_b=image2")
    cli("annotators", str(out))
    cli("flag", str(out))
    consensus = Dataset(out).read_table("consensus").to_pandas()
    assert (consensus["other_votes"] > 0).all() and consensus["vote_entropy"].notna().all()


def test_works_with_no_scorers_no_annotators_single_judgements(tmp_path):
    csv, _, _ = write_table(tmp_path / "t")  # three good rows, no annotator column mapped, each pair judged once
    cli("ingest", str(csv), "-f", "table", "-o", str(tmp_path / "ds"), "--image-root", str(tmp_path / "t"),
        "--map", "prompt=caption", "--map", "image_a=left", "--map", "image_b=right", "--map", "label=winner",
        "--map", "annotator=caption")
    cli("annotators", str(tmp_path / "ds"), "--no-bradley-terry")
    cli("flag", str(tmp_path / "ds"))
    scores = Dataset(tmp_path / "ds").read_table("pair_scores").to_pandas()
    assert len(scores) == 3 and not scores["is_minority"].any()
    assert scores["u"].isna().all() and (scores["signals"] == 0).all()
    assert scores["minority_score"].isna().all()  # no evidence either way: no score
    labels = Dataset(tmp_path / "ds").read_table("pairs", ["label"]).to_pandas()["label"]
    assert scores["weight"].tolist() == [0.0 if label == "tie" else 1.0 for label in labels]  # ties never train


def test_dask_gives_the_same_tables(world, tmp_path):
    import shutil

    for name, extra in (("local", []), ("dask", ["--executor", "dask", "--workers", "2"])):
        copy = tmp_path / name
        shutil.copytree(world / "ds", copy)
        cli("annotators", str(copy), *extra)
        cli("flag", str(copy), *extra)
    for table in ("consensus", "annotators", "pair_scores", "taste_groups", "image_strengths", "vote_groups",
                  "signal_scales", "minority_sketch"):
        local, dask = Dataset(tmp_path / "local").shards(table), Dataset(tmp_path / "dask").shards(table)
        assert len(local) == len(dask) > 0, table
        for a, b in zip(local, dask):
            assert a.read_bytes() == b.read_bytes(), (table, a.name)


def test_bootstrap_gives_the_stability_of_each_consensus(world, tmp_path):
    import shutil

    shutil.copytree(world / "ds", tmp_path / "ds")
    cli("annotators", str(tmp_path / "ds"), "--bootstrap", "8")
    consensus = Dataset(tmp_path / "ds").read_table("consensus").to_pandas()
    decided = Dataset(tmp_path / "ds").read_table("pairs", ["label"]).to_pandas()["label"] != "tie"
    assert consensus["bt_stability"][decided].notna().all()  # every image pair with a decided judgement was compared
    stability = consensus["bt_stability"].dropna()
    assert stability.between(0, 1).all() and stability.mean() > 0.5  # the full fit's order mostly survives
    # the order of a pair the crowd strongly agrees on is more stable than one it is split on
    strong = consensus["bt_margin"].abs() > consensus["bt_margin"].abs().median()
    assert stability[strong].mean() > stability[~strong].mean()
    first = (tmp_path / "ds" / "tables" / "consensus" / "consensus-00000.arrow").read_bytes()
    cli("annotators", str(tmp_path / "ds"), "--bootstrap", "8")
    assert (tmp_path / "ds" / "tables" / "consensus" / "consensus-00000.arrow").read_bytes() == first  # seeded


def _frame(ds, table: str) -> pl.DataFrame:
    frame = Dataset(ds).scan(table).collect()
    return frame.sort(frame.columns[0])


def test_results_do_not_depend_on_the_sharding(world, tmp_path):
    for rows in (300, 5000):
        cli("ingest", str(world / "pickapic"), "-f", "pickapic", "-o", str(tmp_path / f"ds{rows}"), "--shard-rows", str(rows))
        cli("annotators", str(tmp_path / f"ds{rows}"))
        cli("flag", str(tmp_path / f"ds{rows}"), "--quantile", "0.1")
    assert len(Dataset(tmp_path / "ds300").shards("consensus")) > 1
    for table in ("consensus", "annotators", "taste_groups", "signal_scales", "pair_scores"):
        assert _frame(tmp_path / "ds300", table).equals(_frame(tmp_path / "ds5000", table)), table


def test_taste_groups_are_reported(world):
    cli("annotators", str(world / "ds"))
    groups = Dataset(world / "ds").read_table("taste_groups").to_pandas()
    people = Dataset(world / "ds").read_table("annotators").to_pandas()
    assert groups["name"].iloc[-1] == "random" and (groups["name"] == "majority").sum() == 1
    majority = groups[groups["name"] == "majority"].iloc[0]
    assert majority["people"] == groups["people"].max()  # the majority is the taste most PEOPLE hold
    assert groups["judgement_share"].sum() == pytest.approx(1, abs=1e-3)
    assert all(len(d) > 20 for d in groups["direction"])
    np.testing.assert_allclose(people["memberships"].apply(sum), 1, atol=1e-4)
    assert set(people["taste_group"]) <= set(groups["name"])
    truth = pl.read_parquet(world / "truth" / "annotators.parquet").to_pandas().set_index("annotator_id")
    active = people[people["judgements"] >= 10].set_index("annotator_id").join(truth)
    artsy = active[active["type"] == "minority_artsy"]
    assert (artsy["taste_group"] != "majority").mean() > 0.5  # most active "artsy" people are found
    assert (active[active["type"] == "majority"]["taste_group"] == "majority").mean() > 0.9
    from curate.report.tastes import taste_section

    block = taste_section(Dataset(world / "ds"))
    assert block.count("<tr>") == len(groups) + 1 and majority["direction"] in block


def test_bad_flag_options_fail_before_anything_is_cleared(world, tmp_path):
    import shutil

    shutil.copytree(world / "ds", tmp_path / "ds")
    cli("annotators", str(tmp_path / "ds"))
    cli("flag", str(tmp_path / "ds"))
    before = [p.read_bytes() for p in Dataset(tmp_path / "ds").shards("pair_scores")]
    for bad in (["--weight-kind", "cubic"], ["--weight-from", "nope"], ["--quantile", "1.5"]):
        result = runner.invoke(app, ["flag", str(tmp_path / "ds"), *bad])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert [p.read_bytes() for p in Dataset(tmp_path / "ds").shards("pair_scores")] == before


def test_flag_scores_against_the_annotators_table_it_finds(world, tmp_path):
    import shutil

    shutil.copytree(world / "ds", tmp_path / "ds")
    ds = tmp_path / "ds"
    cli("annotators", str(ds))
    cli("flag", str(ds))
    cli("annotators", str(ds), "--no-bradley-terry")  # a different table, in the same process
    cli("flag", str(ds))
    people = Dataset(ds).read_table("annotators").to_pandas().set_index("annotator_id")["reliability"]
    scores = Dataset(ds).scan("pair_scores").collect().join(Dataset(ds).scan("pairs").select("pair_id", "annotator_id").collect(),
                                                             on="pair_id").to_pandas()
    np.testing.assert_allclose(scores["reliability"], people.reindex(scores["annotator_id"]).to_numpy(), rtol=1e-6)


def test_a_planted_pickle_is_refused_on_resume(world, tmp_path):
    import pickle
    import shutil

    shutil.copytree(world / "ds", tmp_path / "ds")
    cli("annotators", str(tmp_path / "ds"))
    run = tmp_path / "ds" / "runs" / "annotators" / "shards"
    assert sorted(p.suffix for p in run.iterdir() if "partial" in p.name) == [".npz"]
    (run / "00000.partial.pkl").write_bytes(pickle.dumps({"planted": 1}))
    result = runner.invoke(app, ["annotators", str(tmp_path / "ds"), "--resume"])
    assert result.exit_code == 2 and "refusing" in result.output and "Traceback" not in result.output, result.output


def test_explain_names_the_taste_group(world):
    cli("annotators", str(world / "ds"))
    cli("flag", str(world / "ds"))
    pair = Dataset(world / "ds").scan("pair_scores").filter(pl.col("is_minority")).collect()["pair_id"][0]
    out = cli("flag", str(world / "ds"), "--explain", pair)
    assert "taste group" in out and "majority" in out


def test_consensus_files_of_the_older_stage_are_named_with_the_fix(world, tmp_path):
    import shutil

    shutil.copytree(world / "ds", tmp_path / "ds")
    old = tmp_path / "ds" / "tables" / "consensus" / "annotators-00000.arrow"
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_bytes(b"left by the one-pass annotators stage")
    result = runner.invoke(app, ["annotators", str(tmp_path / "ds")])
    assert result.exit_code == 2 and "annotators-00000.arrow" in result.output and "delete them" in result.output


def test_consensus_refuses_first_pass_facts_out_of_step_with_the_pairs(world, tmp_path):
    """The consensus pass reads what pass 1 stored for its shard; a partial of another length is refused, with the fix."""
    import shutil

    from curate.annotators.consensus import ConsensusStage
    from curate.annotators.stage import JUDGEMENT_KEYS
    from curate.partials import load_partial, save_partial
    from curate.runner import partial_path, run_stage

    root = tmp_path / "ds"
    shutil.copytree(world / "ds", root)
    cli("annotators", str(root))
    path = partial_path(Dataset(root), "annotators", 0)
    stored = load_partial(path)
    save_partial(path, {k: v[:-1] if k in JUDGEMENT_KEYS else v for k, v in stored.items()}, "annotators")  # one judgement short
    with pytest.raises(Exception, match=r"rerun `prefcurate annotators`") as error:
        run_stage(ConsensusStage(), root)
    assert "pass 1" in str(error.value) and "shard 0" in str(error.value)
