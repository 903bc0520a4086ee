"""How well the flags find the planted minority labels of the synthetic world.

    python benchmarks/flagging.py                  # 10%, 20%, 30% minority, 6000 pairs each
    python benchmarks/flagging.py --pairs 2000 --rates 0.2

For each minority rate: make a world, run ingest -> embed (the shipped domain CLIP, if present) ->
annotators -> flag, then score each signal alone and the combination against the truth:
- annotator side: the annotator's shrunk reliability (low = suspicious);
- human consensus: the Bradley-Terry margin of the labelled winner, leaving the judgement out;
- scorer side: the mean normalised CLIP margin of the labelled winner;
- u: the Adaptive-DPO metric over those signals;
- combined: the minority score (consensus and reliability as independent evidence).
AUROC is computed over non-tie judgements; precision and recall are those of the flag itself.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl
from scipy.stats import rankdata


def auroc(score: np.ndarray, truth: np.ndarray) -> float:
    keep = ~np.isnan(score)
    score, truth = score[keep], truth[keep]
    pos = truth.sum()
    if pos == 0 or pos == len(truth):
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[truth].sum() - pos * (pos + 1) / 2) / (pos * (len(truth) - pos)))


def run_world(root: Path, pairs: int, rate: float, seed: int, with_clip: bool) -> pl.DataFrame:
    from curate.annotators.flag import FlagStage
    from curate.annotators.stage import AnnotatorsStage
    from curate.ingest.stage import IngestStage
    from curate.runner import run_stage
    from curate.synth.world import WorldConfig, build_world

    shutil.rmtree(root, ignore_errors=True)
    build_world(root, WorldConfig(pairs=pairs, seed=seed, minority_rate=rate, formats=("pickapic",)))
    ds = root / "ds"
    run_stage(IngestStage(files=[str(p) for p in sorted((root / "pickapic").glob("*.parquet"))], format="pickapic"), ds)
    if with_clip:
        from typer.testing import CliRunner

        from curate.cli import app

        result = CliRunner().invoke(app, ["embed", str(ds), "--model", "domain"])
        assert result.exit_code == 0, result.output
    run_stage(AnnotatorsStage(), ds)
    run_stage(FlagStage(), ds)
    from curate.dataset import Dataset

    d = Dataset(ds)
    truth = pl.read_parquet(root / "truth" / "pairs.parquet").select("pair_id", truth="is_minority")
    return (d.scan("pair_scores").collect().join(d.scan("consensus").collect(), on="pair_id")
            .join(d.scan("pairs").select("pair_id", "label").collect(), on="pair_id").join(truth, on="pair_id")
            .filter(pl.col("label") != "tie"))


def signal_scores(frame: pl.DataFrame) -> dict[str, np.ndarray]:
    f = lambda c: frame[c].cast(pl.Float64).fill_null(np.nan).to_numpy()  # noqa: E731
    names = frame["signal_names"][0].to_list()
    margins = np.array(frame["signal_margins"].to_list(), dtype=float)
    scorer_cols = [i for i, n in enumerate(names) if n.startswith("scorer:")]
    out = {"annotator side (reliability)": -f("reliability"), "human consensus (Bradley-Terry)": -f("bt_margin")}
    if scorer_cols:
        out["scorer side (CLIP margin)"] = -np.nanmean(margins[:, scorer_cols], axis=1)
    out["u (Adaptive-DPO metric)"] = f("u")
    out["combined (minority score)"] = f("minority_score")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=6000)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/prefcurate-bench-flagging"))
    args = parser.parse_args()
    from curate.clip.models import DOMAIN_DIR

    with_clip = any(DOMAIN_DIR.glob("*.safetensors"))
    if not with_clip:
        print("note: the domain CLIP weights are not in curate/assets: the scorer side is left out")
    for rate in args.rates:
        started = time.perf_counter()
        frame = run_world(args.work / f"rate-{rate}", args.pairs, rate, args.seed, with_clip)
        truth = frame["truth"].to_numpy()
        flagged = frame["is_minority"].to_numpy()
        tp = int((flagged & truth).sum())
        print(f"\n== minority rate {rate:.0%}: {len(frame):,} non-tie judgements, {truth.mean():.1%} minority "
              f"(realised), {time.perf_counter() - started:.0f} s ==")
        for name, score in signal_scores(frame).items():
            print(f"  AUROC {auroc(score, truth):.3f}  {name}")
        print(f"  flag (minority score >= 0.5): precision {tp / max(flagged.sum(), 1):.3f}, "
              f"recall {tp / max(truth.sum(), 1):.3f}, flagged {flagged.mean():.1%}")


if __name__ == "__main__":
    main()
