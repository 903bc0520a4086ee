"""`prefcurate embed`: CLIP embeddings of a dataset's images and prompts, and the CLIP scores of its pairs."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from curate.cli.common import DashboardOpt, DatasetArg, Device, Precision, ExecutorName, ExecutorOpt, ResumeOpt, SchedulerOpt, WorkersOpt, fail, print_counts
from curate.cli.output import json_summary, stage_summary


@json_summary
def embed(
    dataset_dir: DatasetArg,
    model: Annotated[str, typer.Option("--model", "-m", help="An open_clip architecture (ViT-B-32, ...), "
                                       "hf-hub:ORG/REPO, local-dir:PATH, or 'domain' (the small CLIP shipped "
                                       "with prefcurate, trained on its synthetic world).")] = "domain",
    pretrained: Annotated[Optional[str], typer.Option("--pretrained", "-p", help="A pretrained tag of the "
                          "architecture (e.g. laion2b_s34b_b79k), a checkpoint file, or 'random' (benchmarks "
                          "only). Ignored for hf-hub:, local-dir: and domain.")] = None,
    device: Annotated[Device, typer.Option(help="auto: cuda when available, else cpu.")] = Device.auto,
    precision: Annotated[Precision, typer.Option(help="Model precision (inputs are cast to it).")] = Precision.fp32,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images (and prompts) per forward pass.")] = 64,
    decode_workers: Annotated[Optional[int], typer.Option("--decode-workers", min=0, help="Processes decoding "
                              "images while the model runs (0: in the model's process). Default: 2 on a GPU, 0 "
                              "on the CPU, where the model has the core.")] = None,
    images_per_shard: Annotated[int, typer.Option("--images-per-shard", min=1, help="Images per output shard.")] = 4096,
    executor: ExecutorOpt = ExecutorName.local,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = 2,
    dashboard: DashboardOpt = False,
    resume: ResumeOpt = False,
) -> None:
    """Embed each distinct image and prompt once per model (incremental), then score every pair.

    Writes image_embeddings, prompt_embeddings, embed_failures (undecodable images, with reasons),
    scores (scorer clip:<model>, raw prompt-image cosine) and clip_scores (per pair: both scores,
    the winner's margin, the image-image cosine). Ids a model already embedded are skipped.
    """
    from curate.clip.embed import EmbedOptions
    from curate.clip.models import ModelError, resolve
    from curate.clip.pipeline import embed_dataset
    from curate.dataset import DatasetError
    from curate.cli.common import stage_executor
    from curate.runner import FingerprintMismatch

    try:
        source = resolve(model, pretrained)
        options = EmbedOptions(device=device.value, batch_size=batch_size, decode_workers=decode_workers)
        with stage_executor(executor, scheduler, workers, dashboard) as ex:
            summary = embed_dataset(dataset_dir, source, precision=precision.value, options=options, executor=ex,
                                    resume=resume, images_per_shard=images_per_shard)
    except (ModelError, DatasetError, FingerprintMismatch) as exc:
        fail(str(exc))
    print_embed_summary(summary, dataset_dir)
    return {"dataset": str(dataset_dir), "model": summary.model, "images_per_second": summary.images_per_second,
            "embed": stage_summary(summary.embed) if summary.embed else None, "scores": stage_summary(summary.scores)}


def print_embed_summary(summary, dataset_dir: Path) -> None:
    stats = summary.embed.stats if summary.embed else {}
    rows = [("model", summary.model),
            ("images embedded", stats.get("images_embedded", 0)),
            ("images failed (see embed_failures)", stats.get("images_failed", 0)),
            ("images already embedded", stats.get("images_already_embedded", 0) if summary.embed else "all"),
            ("prompts embedded", stats.get("prompts_embedded", 0)),
            ("images/s (embed stage)", f"{summary.images_per_second:.1f}"),
            ("pairs scored", summary.scores.stats.get("pairs_scored", 0)),
            ("pairs unscored (missing embedding)", summary.scores.stats.get("pairs_unscored", 0)),
            ("scores rows", summary.scores.stats.get("scores_rows", 0))]
    if stats.get("shards_decoded_in_process"):
        rows.append(("shards decoded in-process (daemonic worker)", stats["shards_decoded_in_process"]))
    print_counts(f"embed -> {dataset_dir}", rows)
