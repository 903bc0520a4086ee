"""Rendering through the diffusers pipeline that ``curate.train.models.Components.pipeline`` builds (as ``sample`` does)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from curate.evaluation import Sampler
from curate.evaluation.run import (CONFIG, EvalConfig, EvalResult, EvaluationError, Progress, TunedModel, check_folder,
                                   check_tuned, pending_batches, write_batch)

SCHEDULERS = {Sampler.ddim: "DDIMScheduler", Sampler.ddpm: "DDPMScheduler", Sampler.euler: "EulerDiscreteScheduler",
              Sampler.dpm: "DPMSolverMultistepScheduler", Sampler.pndm: "PNDMScheduler"}


def evaluate(config: EvalConfig, out: str | Path, *, device: str = "auto", precision: str = "fp32",
             scorer_batch: int = 16, progress: Progress | None = None) -> EvalResult:
    """Render what ``out`` lacks, score it with every scorer, then write ``images.parquet`` and ``summary.json``.

    Every scorer is loaded, and checks the prompts, and the model is loaded before anything is
    written, so missing weights, a missing model or prompts a scorer cannot judge fail at once.
    """
    from accelerate import PartialState

    from curate.clip.models import resolve_device
    from curate.dataset import write_json_atomic
    from curate.evaluation.summary import write_summary
    from curate.scorers import load_scorer

    out = Path(out)
    check_folder(out, config)
    check_tuned(config.tuned)
    state = PartialState(cpu=resolve_device(device) == "cpu")
    device = str(state.device) if state.num_processes > 1 else resolve_device(device)
    scorers = [load_scorer(name, device, precision) for name in config.scorers]
    for scorer in scorers:
        scorer.check_prompts(list(config.prompts))
    todo = {m: pending_batches(out, config, m)[state.process_index::state.num_processes] for m in config.models}
    components = _load_components(config) if any(todo.values()) else None
    if state.is_main_process:  # the folder is made only once the scorers and the model have loaded
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / CONFIG, config.to_json())
    state.wait_for_everyone()  # all split the same pending list: no batch is committed before every process read it
    result = EvalResult(out)
    for model, tuned in zip(config.models, (None, *config.tuned)):
        if todo[model]:
            with pipeline(components, tuned, config, device, precision) as pipe:
                result.rendered[model] = render_batches(pipe, config, out, model, todo[model], scorers,
                                                        scorer_batch, progress)
    state.wait_for_everyone()
    if state.is_main_process:
        result.summary = write_summary(out, config, {s.name: s.key for s in scorers})
    return result


def _load_components(config: EvalConfig):
    from curate.train.models import load_components

    return load_components(config.model, config.revision)


@contextmanager
def pipeline(components, tuned: TunedModel | None, config: EvalConfig, device: str, precision: str):
    """The base pipeline, with a LoRA loaded (and unloaded after) or with a full fine-tune's UNet."""
    import diffusers

    from curate.scorers.base import torch_dtype
    from curate.train.models import load_components

    unet = load_components(tuned.path).unet if tuned is not None and tuned.kind == "full" else None
    pipe = components.pipeline(unet=unet)
    pipe.scheduler = getattr(diffusers, SCHEDULERS[Sampler(config.sampler)]).from_config(pipe.scheduler.config)
    pipe = pipe.to(device) if precision == "fp32" else pipe.to(device, torch_dtype(precision))
    pipe.set_progress_bar_config(disable=True)
    if tuned is not None and tuned.kind == "lora":
        try:
            pipe.load_lora_weights(tuned.path)
        except (OSError, ValueError) as err:
            raise EvaluationError(f"--lora {tuned.path}: not a LoRA folder that diffusers reads "
                                  f"(train's final/ with --finetune lora): {str(err).splitlines()[0]}") from err
    try:
        yield pipe
    finally:
        if tuned is not None and tuned.kind == "lora":
            pipe.unload_lora_weights()


def render_batches(pipe, config: EvalConfig, out: Path, model: str, batches: list[int], scorers, scorer_batch: int,
                   progress: Progress | None) -> int:
    """Render, score and commit each batch in turn; returns how many images were rendered."""
    import torch

    total, done = sum(len(config.batches()[b]) for b in batches), 0
    for b in batches:
        indices = list(config.batches()[b])
        prompts = [config.prompts[i // config.images_per_prompt] for i in indices]
        generators = [torch.Generator().manual_seed(config.seed + i) for i in indices]
        images = pipe(prompt=prompts, generator=generators, num_inference_steps=config.steps,
                      guidance_scale=config.guidance_scale, height=config.resolution, width=config.resolution).images
        done += len(indices)
        if progress:
            progress(f"render {model}", done, total)
        scores = {s.name: s.score(images, prompts, scorer_batch).tolist() for s in scorers}
        write_batch(out, config, model, b, images, scores)
        if progress:
            progress(f"score {model}", done, total)
    return done
