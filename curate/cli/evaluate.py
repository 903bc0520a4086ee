"""`prefcurate evaluate`: what training bought, measured as the papers do (paired win rates under reward models)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from curate.cli.common import Device, Precision, fail
from curate.cli.output import json_summary
from curate.evaluation import Sampler


@json_summary
def evaluate(
    model: Annotated[str, typer.Option("--model", "-m", help="The base model: a hub id or a local diffusers folder "
                                       "(SD 1.x/2.x or SDXL), as `train` takes it. Honours HF_HUB_OFFLINE.")],
    prompts: Annotated[str, typer.Option("--prompts", help="The prompt suite: world[:N] (the synthetic world's "
                       "held-out prompts), a dataset folder (its held-out split), PartiPrompts' TSV, HPSv2's "
                       "benchmark JSON (a file or its folder), or a .txt/.csv/.jsonl/.parquet with a prompt column.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for images, shards, images.parquet and "
                   "summary.json; running again into it finishes what a crash left.", file_okay=False)],
    lora: Annotated[Optional[list[Path]], typer.Option("--lora", help="A tuned model as a LoRA folder (train's "
                    "final/ with --finetune lora). Repeatable.", exists=True, file_okay=False)] = None,
    tuned: Annotated[Optional[list[Path]], typer.Option("--tuned", help="A tuned model as a full diffusers folder "
                     "(train's final/ with --finetune full); its UNet is used. Repeatable.", exists=True,
                     file_okay=False)] = None,
    scorers: Annotated[str, typer.Option("--scorers", help="Comma-separated KIND[:SOURCE]: clip[:ARCH/TAG|domain|"
                       "hf-hub:..|local-dir:..], pickscore[:ID|DIR], hps[:v2|v2.1|FILE], aesthetic:FILE, "
                       "world[:reward|fidelity|quality], imagereward[:FILE].")] = "clip:domain",
    images_per_prompt: Annotated[int, typer.Option("--images-per-prompt", min=1, help="Images per prompt and model, "
                                 "each from its own seed.")] = 2,
    seed: Annotated[int, typer.Option(help="Image k of prompt p has seed SEED + p * images-per-prompt + k in "
                    "every model.")] = 0,
    max_prompts: Annotated[Optional[int], typer.Option("--max-prompts", min=1, help="Use only the suite's first "
                           "N prompts.")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Sampling steps.")] = 25,
    guidance_scale: Annotated[float, typer.Option("--guidance-scale", help="Classifier-free guidance scale.")] = 5.0,
    resolution: Annotated[Optional[int], typer.Option(min=8, help="Image side in pixels (default: the model's).")] = None,
    sampler: Annotated[Sampler, typer.Option(help="The scheduler that samples, built from the model's scheduler "
                       "config (the same for every model).")] = Sampler.ddim,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per pipeline call; also the unit "
                          "of resumption.")] = 8,
    scorer_batch: Annotated[int, typer.Option("--scorer-batch", min=1, help="Images per scorer forward pass.")] = 16,
    device: Annotated[Device, typer.Option(help="auto: cuda when available, else cpu. Under `accelerate launch` "
                      "each process renders every n-th batch on its own device.")] = Device.auto,
    precision: Annotated[Precision, typer.Option(help="Precision of the pipeline and the scorers.")] = Precision.fp32,
    revision: Annotated[Optional[str], typer.Option(help="Hub revision of --model.")] = None,
) -> None:
    """Render the base and every tuned model from the same seeds on a prompt suite, score every image,
    and write the per-image table (images.parquet) and summary.json: per scorer each model's mean, and
    the paired win rate of each tuned model over the base (ties half) and the mean paired difference,
    each with a 95% bootstrap interval over prompts; per category where the suite has categories."""
    from curate.dataset import DatasetError
    from curate.evaluation.render import evaluate as run_evaluation
    from curate.evaluation.run import EvaluationError, make_config
    from curate.evaluation.suites import SuiteError, load_suite
    from curate.scorers import ScorerError, parse_specs

    if not lora and not tuned:
        fail("give at least one tuned model: --lora DIR or --tuned DIR")
    try:
        specs = parse_specs(scorers)
        suite = load_suite(prompts, max_prompts)
        config = make_config(model, suite, [s.name for s in specs], loras=[str(p) for p in lora or []],
                             fulls=[str(p) for p in tuned or []], images_per_prompt=images_per_prompt, seed=seed,
                             steps=steps, guidance_scale=guidance_scale, resolution=resolution,
                             sampler=sampler.value, batch_size=batch_size, revision=revision)
        for note in suite.notes:
            typer.echo(f"note: {note}")
        from curate.progress import progress_bars

        with progress_bars() as progress:
            result = run_evaluation(config, out, device=device.value, precision=precision.value,
                                    scorer_batch=scorer_batch, progress=progress)
    except (ScorerError, SuiteError, EvaluationError, DatasetError, FileNotFoundError) as err:
        fail(str(err))
    if result.summary is not None:
        _print_summary(result.summary, out)
    return {"out": str(out), "rendered": result.rendered, "summary": result.summary}


def _print_summary(summary: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"evaluate -> {out} ({summary['prompts']} prompts x {summary['images_per_prompt']} images)",
                  title_justify="left")
    for column in ("scorer", "model", "mean", "win rate vs base [95% CI]", "mean diff [95% CI]"):
        table.add_column(column, justify="left" if column in ("scorer", "model") else "right")
    for name in summary["scorer_order"]:
        entry = summary["scorers"][name]
        table.add_row(name, "base", f"{entry['mean']['base']:.4f}", "", "")
        for model, c in entry["comparisons"].items():
            table.add_row("", model, f"{entry['mean'][model]:.4f}",
                          f"{c['win_rate']:.3f} [{c['win_rate_ci'][0]:.3f}, {c['win_rate_ci'][1]:.3f}]",
                          f"{c['mean_diff']:+.4f} [{c['mean_diff_ci'][0]:+.4f}, {c['mean_diff_ci'][1]:+.4f}]")
    Console().print(table)
