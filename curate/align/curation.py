"""Run prefcurate's real curation stages over the benchmark's preference data.

The pairs are written as a generic table (CSV + PNG files) and go through ingest -> embed (the
shipped domain CLIP as the AI annotator, when its weights are present) -> annotators -> flag, as a
user's dataset would. What comes back, per pair in input order, is what the trainer can use: the
minority score u (adaptive-offline) and the flag (pairs to drop for "dpo on the curated set").
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from curate.synth import annotators as an


def write_table(root: Path, images: np.ndarray, prompts: list[str], label: np.ndarray, annotator: np.ndarray) -> Path:
    """pairs.csv (prompt, image_a, image_b, label, annotator) over PNGs under root/images."""
    import polars as pl
    from PIL import Image

    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        path = folder / f"{i:06d}.png"
        if not path.exists():
            Image.fromarray(image).save(path)
    n = len(prompts)
    table = pl.DataFrame({"prompt": prompts, "image_a": [f"images/{2 * i:06d}.png" for i in range(n)],
                          "image_b": [f"images/{2 * i + 1:06d}.png" for i in range(n)],
                          "label": np.array(an.LABELS)[label].tolist(), "annotator": [str(u) for u in annotator]})
    path = root / "pairs.csv"
    table.write_csv(path)
    return path


def curate_pairs(root: Path, images: np.ndarray, prompts: list[str], label: np.ndarray, annotator: np.ndarray,
                 *, use_clip: bool = True, quantile: float | None = None) -> dict[str, np.ndarray]:
    """u, flagged, weight and minority_score per pair (input order) from the real stages.

    ``quantile`` flags the top share by minority score (``prefcurate flag --quantile``); None keeps
    the flag stage's default absolute threshold.
    """
    import polars as pl

    from curate.annotators.flag import FlagStage
    from curate.annotators.stage import AnnotatorsStage
    from curate.dataset import Dataset
    from curate.ingest.stage import IngestStage
    from curate.runner import make_executor, run_stage

    ds = root / "dataset"
    shutil.rmtree(ds, ignore_errors=True)
    csv = write_table(root, images, prompts, label, annotator)
    run_stage(IngestStage(files=[str(csv)], format="table", image_root=str(root)), ds)
    scorer = use_clip and _domain_clip_available()
    if scorer:
        from curate.clip.embed import EmbedOptions
        from curate.clip.models import resolve
        from curate.clip.pipeline import embed_dataset

        with make_executor("local") as executor:
            embed_dataset(ds, resolve("domain"), precision="fp32", executor=executor, resume=False,
                          options=EmbedOptions(device="cpu", batch_size=128, decode_workers=0))
    run_stage(AnnotatorsStage(), ds)
    run_stage(FlagStage(quantile=quantile), ds)
    data = Dataset(ds)
    pairs = data.scan("pairs").select("pair_id", "source_row").collect()
    scores = data.scan("pair_scores").collect().join(pairs, on="pair_id").sort("source_row")
    if scores.height != len(prompts) or scores["source_row"].to_list() != list(range(len(prompts))):
        rejects = data.scan("rejects").collect().height if data.has("rejects") else 0
        raise RuntimeError(f"{ds}: {scores.height} scored pairs for {len(prompts)} written ({rejects} rejected by "
                           "ingest); the benchmark needs every pair back, in order")
    f = lambda c: scores[c].cast(pl.Float64).fill_null(np.nan).to_numpy()  # noqa: E731
    return {"u": np.nan_to_num(f("u"), nan=0.0), "flagged": scores["is_minority"].to_numpy(),
            "weight": f("weight"), "minority_score": f("minority_score"), "scorer": np.array(bool(scorer))}


def _domain_clip_available() -> bool:
    from curate.clip.models import DOMAIN_DIR

    return any(DOMAIN_DIR.glob("*.safetensors"))
