"""Training on a curated dataset: the one call behind `prefcurate train`, for any Python caller too."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from curate.options import Method, Minority
from curate.train.config import TrainConfig
from curate.train.dataset_source import DatasetPairSource, Selection


def check_train_options(cfg: TrainConfig, selection: Selection, resume: bool = False) -> Selection:
    """The selection the method needs (adaptive-offline reads u from pair_scores), after refusing what
    cannot run: options that contradict each other, a missing package, or an output folder that
    holds a run without ``resume``. Reads no data; a ValueError names the fix."""
    from curate.train.checkpoint import latest_checkpoint
    from curate.train.setup import check_runtime
    from curate.train.step import DOUBLE_WEIGHT

    offline = cfg.method is Method.adaptive_offline
    if offline and selection.minority is Minority.weight:
        raise ValueError(DOUBLE_WEIGHT)
    check_runtime(cfg)
    found = latest_checkpoint(Path(cfg.output_dir))
    if found is not None and not resume:
        raise ValueError(f"{cfg.output_dir} holds {found.name}: pass --resume to continue that run, or choose "
                         f"another --output-dir")
    return replace(selection, need_u=offline)


def train_from_dataset(dataset_dir, cfg: TrainConfig, selection: Selection = Selection(), *,
                       resolution: int | None = None, flip: bool = False, resume: bool = False,
                       on_selected: Callable[[DatasetPairSource], None] | None = None):
    """Train ``cfg`` on the selected pairs of a dataset: (TrainResult, the DatasetPairSource).

    Checks the options (check_train_options), loads the model, selects the pairs with their
    latents and text embeddings, and on the main process calls ``on_selected(source)`` and writes
    ``data.json`` (what was selected and why) into the output folder before training starts.
    """
    from curate.dataset import write_json_atomic
    from curate.train.encode import encoder_key
    from curate.train.loop import empty_prompt, train
    from curate.train.models import load_components, unet_dtype
    from curate.train.setup import make_accelerator

    selection = check_train_options(cfg, selection, resume)
    accelerator = make_accelerator()
    components = load_components(cfg.model, cfg.revision, unet_dtype=unet_dtype(cfg))
    source = DatasetPairSource(dataset_dir, encoder_key(components), cfg.batch_size, selection=selection,
                               resolution=resolution, flip=flip, seed=cfg.seed, rank=accelerator.process_index,
                               world_size=accelerator.num_processes, grad_accum=cfg.grad_accum, model_hint=cfg.model)
    empty_prompt(cfg, source)  # prompt dropout needs it: refuse before the run folder is made
    if accelerator.is_main_process:
        if on_selected is not None:
            on_selected(source)
        write_json_atomic(Path(cfg.output_dir) / "data.json", source.describe())
    return train(cfg, source, components, accelerator=accelerator), source
