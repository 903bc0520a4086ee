"""How well prefcurate finds the planted minority labels, against crowd-kit's classic crowd models.

    python benchmarks/flagging.py                                 # labels only, 3 rates x 3 worlds x 3 seeds
    python benchmarks/flagging.py --pairs 2000 --seeds 1 --rates 0.2 --worlds repeats
    python benchmarks/flagging.py --scorers                       # also 20% with the domain CLIP scorer
    python benchmarks/flagging.py --world-scorer --only-scorers   # 20% with the world scorer (an upper bound)

Worlds (curate.synth, metadata-only Pick-a-Pic unless scorers are on):
- ``repeats``: 4 images per prompt, so many image pairs are judged several times;
- ``single``: 16 images per prompt, so almost every image pair is judged once;
- ``heavy``: as ``repeats``, plus one "artsy" (minority taste) user who makes 30% of all judgements.

Each world runs ingest -> annotators -> flag, and on the very same non-tie judgements crowd-kit's
Dawid-Skene (task = the unordered image pair, label = which image won), Bradley-Terry and
NoisyBradleyTerry (minority score = how much the fit prefers the loser). AUROC against the planted
minority labels overall, on singly and on multiply judged image pairs; and for annotator types,
minority or random (positive) against majority annotators with >= 5 judgements: prefcurate's
annotators.against_majority (the expected share of a person's labels against the majority taste)
against Dawid-Skene's 1 - accuracy, overall, for the "colour" minority alone against the majority,
and by judgement-count bucket (5-9, 10-19, 20 and more), with the oracle that knows which labels
truly reverse the majority's preference. Each figure is the mean over seeds
with its spread (sample standard deviation). Results go to benchmarks/results/flagging.jsonl.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
from scipy.stats import rankdata

WORLDS = {"repeats": {}, "single": {"per_prompt": 16}, "heavy": {"heavy_user_share": 0.3}}
MINORITY_TYPES = ("minority_colour", "minority_artsy", "random")
JUDGEMENT_BUCKETS = ((5, 10), (10, 20), (20, 10**9))


def auroc(score: np.ndarray, truth: np.ndarray) -> float:
    keep = ~np.isnan(score)
    score, truth = score[keep], truth[keep]
    pos = truth.sum()
    if pos == 0 or pos == len(truth):
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[truth].sum() - pos * (pos + 1) / 2) / (pos * (len(truth) - pos)))


def build(root: Path, pairs: int, rate: float, seed: int, world: str, scorers: str | None) -> Path:
    from curate.ingest.stage import IngestStage
    from curate.runner import run_stage
    from curate.synth.world import WorldConfig, build_world

    shutil.rmtree(root, ignore_errors=True)
    build_world(root, WorldConfig(pairs=pairs, seed=seed, minority_rate=rate, formats=("pickapic",), images=scorers is not None,
                                  **WORLDS[world]))
    ds = root / "ds"
    run_stage(IngestStage(files=[str(p) for p in sorted((root / "pickapic").glob("*.parquet"))], format="pickapic"), ds)
    if scorers:
        from typer.testing import CliRunner

        from curate.cli import app

        command = ["embed", str(ds), "--model", "domain"] if scorers == "clip" else ["scores", "compute", str(ds), "--scorer", scorers]
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 0, result.output
    return ds


def prefcurate_scores(ds: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Judgements with prefcurate's minority score, and the annotators table."""
    from curate.annotators.flag import FlagStage
    from curate.annotators.stage import AnnotatorsStage
    from curate.dataset import Dataset
    from curate.runner import run_stage

    run_stage(AnnotatorsStage(), ds)
    run_stage(FlagStage(), ds)
    d = Dataset(ds)
    pairs = d.scan("pairs").select("pair_id", "image_a_id", "image_b_id", "label", "annotator_id").collect()
    scores = d.scan("pair_scores").select("pair_id", "minority_score").collect()
    return pairs.join(scores, on="pair_id").filter(pl.col("label") != "tie"), d.scan("annotators").collect()


def crowd_frame(frame: pl.DataFrame) -> pd.DataFrame:
    """crowd-kit's layout: task = the unordered image pair, label = which of its images won."""
    a, b = frame["image_a_id"].to_numpy(), frame["image_b_id"].to_numpy()
    winner = np.where(frame["label"].to_numpy() == "a", a, b)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return pd.DataFrame({"task": lo + hi, "worker": frame["annotator_id"].to_numpy(), "left": a, "right": b,
                         "winner": winner, "label": np.where(winner == lo, "lo", "hi"),
                         "loser": np.where(winner == a, b, a)})


def classic_scores(df: pd.DataFrame) -> tuple[dict[str, np.ndarray], pd.Series]:
    """Minority scores of crowd-kit's Dawid-Skene, Bradley-Terry and NoisyBT; Dawid-Skene's worker accuracy."""
    import warnings

    from crowdkit.aggregation import BradleyTerry, DawidSkene, NoisyBradleyTerry

    warnings.filterwarnings("ignore", category=RuntimeWarning, module="crowdkit")  # NoisyBT's exp overflows

    ds = DawidSkene(n_iter=100).fit(df[["task", "worker", "label"]])
    p_lo = ds.probas_["lo"].reindex(df["task"]).to_numpy()
    out = {"Dawid-Skene": np.where(df["label"].to_numpy() == "lo", 1 - p_lo, p_lo)}
    comparisons = df[["worker", "left", "right", "winner"]].rename(columns={"winner": "label"})
    for name, model in (("Bradley-Terry", BradleyTerry(n_iter=100)), ("NoisyBT", NoisyBradleyTerry(n_iter=100))):
        scores = model.fit(comparisons).scores_
        out[name] = (scores.reindex(df["loser"]).to_numpy() - scores.reindex(df["winner"]).to_numpy()).astype(float)
    # errors_: rows (worker, observed label), columns the true label: P(observed | true)
    diagonal = pd.concat([ds.errors_.xs(k, level="label")[k] for k in ("lo", "hi")], axis=1).fillna(0.0)
    accuracy = (diagonal * ds.priors_.reindex(["lo", "hi"]).to_numpy()).sum(axis=1)
    return out, accuracy


def evaluate(root: Path, ds: Path) -> dict:
    frame, people = prefcurate_scores(ds)
    truth = pl.read_parquet(root / "truth" / "pairs.parquet").select("pair_id", "is_minority")
    frame = frame.join(truth, on="pair_id", how="left", maintain_order="left")
    df = crowd_frame(frame)
    started = time.perf_counter()
    scores, accuracy = classic_scores(df)
    scores["prefcurate"] = frame["minority_score"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    is_minority = frame["is_minority"].to_numpy()
    repeated = df.groupby("task")["task"].transform("size").to_numpy() > 1
    out = {"judgements": len(df), "minority": float(is_minority.mean()), "repeated_share": float(repeated.mean()),
           "crowdkit_seconds": time.perf_counter() - started}
    for name, score in scores.items():
        out[f"auroc/{name}"] = auroc(score, is_minority)
        out[f"auroc_single/{name}"] = auroc(score[~repeated], is_minority[~repeated])
        out[f"auroc_repeated/{name}"] = auroc(score[repeated], is_minority[repeated])
    out.update(annotator_separation(root, people, accuracy))
    return out


def annotator_separation(root: Path, people: pl.DataFrame, accuracy: pd.Series) -> dict:
    """AUROC of minority-or-random against majority annotators with >= 5 judgements, overall and by
    judgement-count bucket; "oracle" ranks people by their share of labels that truly reverse the
    majority's preference (what a method knowing the majority's taste exactly would see)."""
    types = pl.read_parquet(root / "truth" / "annotators.parquet").select("annotator_id", "type")
    truth = pl.read_parquet(root / "truth" / "pairs.parquet").filter(pl.col("label") != "tie")
    reversal = truth.group_by("annotator_id").agg(oracle=pl.col("is_minority").mean())
    frame = (people.join(types, on="annotator_id").join(reversal, on="annotator_id", how="left")
             .filter((pl.col("judgements") >= 5) & (pl.col("type") != "position")))
    positive = frame["type"].is_in(MINORITY_TYPES).to_numpy()
    colour = frame["type"].is_in(["majority", "minority_colour"]).to_numpy()
    scores = {"prefcurate": frame["against_majority"].cast(pl.Float64).fill_null(np.nan).to_numpy(),
              "Dawid-Skene": 1 - accuracy.reindex(frame["annotator_id"].to_numpy()).to_numpy().astype(float),
              "oracle": frame["oracle"].cast(pl.Float64).fill_null(np.nan).to_numpy()}
    count = frame["judgements"].to_numpy()
    out = {}
    for name, score in scores.items():
        out[f"annotators/{name}"] = auroc(score, positive)
        out[f"annotators_colour/{name}"] = auroc(score[colour], positive[colour])
        for low, high in JUDGEMENT_BUCKETS:
            inside = (count >= low) & (count < high)
            out[f"annotators_{low}-{high if high < 10**9 else 'up'}/{name}"] = auroc(score[inside], positive[inside])
    heavy = frame.sort("judgements", descending=True).head(1)
    return {**out, "heaviest_user": {"type": heavy["type"][0], "judgements": int(heavy["judgements"][0]),
                                     "taste_group": heavy["taste_group"][0]}}


def summarise(rows: list[dict]) -> None:
    frame = pd.DataFrame(rows)
    metrics = [c for c in frame.columns if c.startswith(("auroc", "annotators"))]
    for (world, rate), group in frame.groupby(["world", "rate"]):
        print(f"\n== {world}, {rate:.0%} minority requested ({group['minority'].mean():.1%} realised, "
              f"{group['repeated_share'].mean():.0%} of judgements on repeated image pairs), {len(group)} seeds ==")
        for metric in metrics:
            values = group[metric].astype(float)
            print(f"  {metric:34s} {values.mean():.3f} +- {values.std(ddof=1) if len(values) > 1 else 0:.3f}")
        if world == "heavy":
            print(f"  heaviest user: {group['heaviest_user'].tolist()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=4000)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--seeds", type=int, default=3, help="Seeds 1..N per world and rate.")
    parser.add_argument("--worlds", nargs="+", default=list(WORLDS), choices=list(WORLDS))
    parser.add_argument("--scorers", action="store_true", help="Also 20%% minority with the domain CLIP scorer (renders images).")
    parser.add_argument("--world-scorer", action="store_true",
                        help="Also 20%% minority with the `world` scorer (the world's reward read off the pixels: an upper bound).")
    parser.add_argument("--only-scorers", action="store_true", help="Skip the labels-only worlds.")
    parser.add_argument("--work", type=Path, default=Path("/tmp/prefcurate-bench-flagging"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "flagging.jsonl")
    args = parser.parse_args()
    runs = [] if args.only_scorers else [(w, r, s, None) for w in args.worlds for r in args.rates for s in range(1, args.seeds + 1)]
    runs += [("repeats+scorers", 0.2, s, "clip") for s in range(1, args.seeds + 1)] if args.scorers else []
    runs += [("repeats+world", 0.2, s, "world") for s in range(1, args.seeds + 1)] if args.world_scorer else []
    rows = []
    for world, rate, seed, scorers in runs:
        root = args.work / f"{world}-{rate}-{seed}"
        started = time.perf_counter()
        ds = build(root, args.pairs, rate, seed, world.split("+")[0], scorers)
        row = {"world": world, "rate": rate, "seed": seed, "pairs": args.pairs, **evaluate(root, ds)}
        row["seconds"] = time.perf_counter() - started
        rows.append(row)
        print(f"{world} {rate:.0%} seed {seed}: prefcurate {row['auroc/prefcurate']:.3f}, Dawid-Skene "
              f"{row['auroc/Dawid-Skene']:.3f} ({row['seconds']:.0f} s)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    summarise(rows)


if __name__ == "__main__":
    main()
