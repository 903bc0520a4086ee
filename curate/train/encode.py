"""The encode stage: VAE latents of a dataset's images and text embeddings of its prompts, once per model.

Training reads these tables (curate.train.dataset_source) and never runs the VAE or the text encoders.

- **Which model**: rows carry an encoder key, a hash of the VAE and text-encoder weights and the
  tokenizer vocabularies (``encoder_key``), not the name the model was loaded by: a moved folder, a
  hub id and its local copy, or a UNet fine-tuned on the same base all find the same latents.
- **Images**: the short side resized to ``resolution``, then a centre crop: the same deterministic
  crop for every image, so both images of a pair get it. Latent = VAE posterior mean (not a sample:
  reruns and resumes are exact, and nothing here needs a seed) times the scaling factor.
- **Flip**: with ``flip`` each image is encoded in both orientations (twice the time and storage);
  the trainer then draws a flip per pair and epoch, the same for both images of the pair, as the
  public scripts' random_flip does per step.
- **Prompts**: the normalised text (curate.ids.normalize_prompt). SD 1.x/2.x: the text encoder's
  last hidden state; SDXL: both encoders' penultimate hidden states concatenated, and the pooled
  projection. SDXL's time ids are made at training time from the stored original size and crop.
- **What**: the images and prompts of non-tie pairs, every split (ties are never trained), and the
  empty prompt (``curate.ids.prompt_id("")``), which prompt dropout trains on.
- **Incremental**: each run of a model is a generation, stage ``encode-<key>-g<NNN>``, that encodes
  only what no committed earlier generation wrote (per image: resolution and orientation). An
  interrupted generation is redone, or resumed with ``resume``, before a new one starts.
"""
from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate import schema as schemas
from curate.dataset import Dataset, read_shard
from curate.ids import prompt_id
from curate.options import Precision
from curate.runner import ShardContext, Stage
from curate.train.encode_plan import committed_files, generations, pending_work, stage_prefix

# The trainer reads single rows at random; a compressed record batch is decompressed whole, so keep them small.
ROWS_PER_BATCH = 16


class EncodeError(RuntimeError):
    """The model or the dataset cannot be encoded as asked."""


# ------------------------------------------------------------------------------------ the model
def encoder_key(components) -> str:
    """'sd:<hash>' or 'sdxl:<hash>' of what shapes the encodings: VAE and text-encoder weights (as fp32),
    the VAE's scaling and shift factors, the tokenizers' vocabularies and lengths. The UNet is left out."""
    import torch
    import xxhash

    digest = xxhash.xxh3_128()
    modules = [("vae", components.vae), ("text_encoder", components.text_encoder)]
    tokenizers = [components.tokenizer]
    if components.is_sdxl:
        modules.append(("text_encoder_2", components.text_encoder_2))
        tokenizers.append(components.tokenizer_2)
    for prefix, module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            values = tensor.detach().to("cpu", torch.float32).contiguous()
            digest.update(f"{prefix}.{name}{tuple(values.shape)}".encode())
            digest.update(memoryview(values.numpy()).cast("B"))
    vae = components.vae.config
    digest.update(json.dumps([vae.scaling_factor, getattr(vae, "shift_factor", None)]).encode())
    for tokenizer in tokenizers:
        digest.update(json.dumps([tokenizer.model_max_length, sorted(tokenizer.get_vocab().items())]).encode())
    return f"{'sdxl' if components.is_sdxl else 'sd'}:{digest.hexdigest()[:20]}"


def load_encoders(model: str, revision: str | None = None):
    """Components with the VAE, text encoders and tokenizers of ``model``, without its UNet (unet=None)."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from curate.train.models import Components, _model_index, resolve_model

    model = resolve_model(model)
    sdxl = "text_encoder_2" in _model_index(model, revision)
    load = lambda cls, sub: cls.from_pretrained(model, subfolder=sub, revision=revision)  # noqa: E731
    return Components(unet=None, vae=load(AutoencoderKL, "vae"), noise_scheduler=load(DDPMScheduler, "scheduler"),
                      text_encoder=load(CLIPTextModel, "text_encoder"), tokenizer=load(CLIPTokenizer, "tokenizer"),
                      text_encoder_2=load(CLIPTextModelWithProjection, "text_encoder_2") if sdxl else None,
                      tokenizer_2=load(CLIPTokenizer, "tokenizer_2") if sdxl else None)


@functools.lru_cache(maxsize=1)
def cached_encoders(model: str, revision: str | None, device: str, precision: str):
    """(components, key), loaded once per process (the driver and each Dask worker); the key is taken
    from the fp32 weights before they are cast to ``precision``."""
    import torch

    try:
        precision = Precision(precision).value
    except ValueError:
        raise EncodeError(f"unknown precision {precision!r}; expected one of "
                          f"{', '.join(p.value for p in Precision)}") from None
    components = load_encoders(model, revision)
    key = encoder_key(components)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    for module in (components.vae, components.text_encoder, components.text_encoder_2):
        if module is not None:
            module.to(device).eval().requires_grad_(False)
            if dtype != torch.float32:
                module.to(dtype)
    return components, key


@dataclass(frozen=True)
class Dims:
    """Widths of the flattened tensors, from the model's configs (free sizes of the two schemas)."""

    latent_shape: tuple[int, int, int]
    text_shape: tuple[int, int]
    pooled: int

    @classmethod
    def of(cls, components, resolution: int) -> "Dims":
        vae = components.vae.config
        factor = 2 ** (len(vae.block_out_channels) - 1)
        if resolution % factor:
            raise EncodeError(f"--resolution {resolution} is not a multiple of the VAE's downsampling factor "
                              f"{factor}; pick e.g. {max(factor, resolution // factor * factor)}")
        width = components.text_encoder.config.hidden_size
        pooled = 0
        if components.is_sdxl:
            width += components.text_encoder_2.config.hidden_size
            pooled = components.text_encoder_2.config.projection_dim
        side = resolution // factor
        return cls((vae.latent_channels, side, side), (components.tokenizer.model_max_length, width), pooled)

    def bind(self) -> dict[str, dict[str, int]]:
        return {"latents": {"latent": math.prod(self.latent_shape)},
                "text_embeddings": {"embedding": math.prod(self.text_shape)}}


# --------------------------------------------------------------------------------- the stage
@dataclass
class EncodeStage(Stage):
    """One generation of encodings of ``model`` (whose encoder key is ``key``)."""

    model: str
    key: str
    generation: int
    resolution: int
    flip: bool
    dims: Dims
    prior: dict[str, tuple[str, ...]]
    revision: str | None = None
    device: str = "cpu"
    precision: str = "fp32"
    batch_size: int = 16
    images_per_shard: int = 4096
    prompts_per_shard: int = 4096

    version = 1
    outputs = {"latents": "latents", "text_embeddings": "text_embeddings"}
    inputs = ("pairs", "images")

    def __post_init__(self):
        self.name = f"{stage_prefix(self.key)}{self.generation:03d}"

    def config(self) -> dict:
        # The model enters by its key, not its path: moving the folder does not invalidate a resume.
        return {"model": self.key, "resolution": self.resolution, "flip": self.flip, "precision": self.precision,
                "images_per_shard": self.images_per_shard, "prompts_per_shard": self.prompts_per_shard,
                "after": {t: list(f) for t, f in self.prior.items()}}

    def output_dims(self):
        return self.dims.bind()

    def plan(self, dataset: Dataset) -> list[dict]:
        return pending_work(dataset, self.key, self.resolution, self.flip, self.prior,
                            self.images_per_shard, self.prompts_per_shard).specs

    def process(self, spec: dict, ctx: ShardContext) -> Iterator[tuple[str, pa.RecordBatch]]:
        components, key = cached_encoders(self.model, self.revision, self.device, self.precision)
        if key != self.key:
            raise EncodeError(f"the model at {self.model} has encoder key {key}, but this run started with "
                              f"{self.key}: its VAE or text encoders changed; run encode again without --resume")
        if spec["kind"] == "images":
            yield from self._images(components, spec, ctx)
        else:
            yield from self._prompts(components, spec, ctx)

    def _images(self, components, spec: dict, ctx: ShardContext):
        import torch

        from curate.images import decode_image
        from curate.train.vae import crop_top_left, to_pixels, vae_latents

        table = read_shard(Path(spec["shard"]), ["image_id", "bytes"]).take(spec["rows"])
        ids, blobs = table["image_id"].to_pylist(), table["bytes"]
        rows: list[tuple] = []
        for start in range(0, len(ids), self.batch_size):
            samples = []
            for i in range(start, min(start + self.batch_size, len(ids))):
                try:
                    image = decode_image(blobs[i].as_py())
                except Exception:  # noqa: BLE001 (PIL raises many kinds; each is counted, none stops the run)
                    ctx.stats["images_undecodable"] += 1
                    continue
                pixels = to_pixels(image, self.resolution)
                meta = (image.size[0], image.size[1], *crop_top_left(image.size, self.resolution))
                for flipped, bit in ((False, 1), (True, 2)):
                    if spec["mask"][i] & bit:
                        # The centre crop is symmetric: flipping the crop is cropping the flipped image.
                        samples.append((ids[i], flipped, meta, pixels.flip(-1) if flipped else pixels))
            if samples:
                latents = vae_latents(components.vae, torch.stack([s[3] for s in samples]), self.device)
                check_finite(latents, f"latents of images {[s[0] for s in samples][:3]}", self.precision)
                rows += [(*s[:3], z) for s, z in zip(samples, latents.numpy())]
            while len(rows) >= ROWS_PER_BATCH:
                yield "latents", self._latent_batch(rows[:ROWS_PER_BATCH], ctx)
                rows = rows[ROWS_PER_BATCH:]
        if rows:
            yield "latents", self._latent_batch(rows, ctx)

    def _latent_batch(self, rows: list[tuple], ctx: ShardContext) -> pa.RecordBatch:
        ctx.stats["latents_encoded"] += len(rows)
        ctx.stats["latents_flipped"] += sum(r[1] for r in rows)
        n = len(rows)
        meta = np.array([r[2] for r in rows], dtype=np.int32).reshape(n, 4)
        tensors = np.stack([r[3] for r in rows]).astype(np.float16)
        return pa.RecordBatch.from_arrays([
            pa.array([r[0] for r in rows], pa.string()), pa.array([self.key] * n, pa.string()),
            pa.array(np.full(n, self.resolution, np.int32)), pa.array([r[1] for r in rows], pa.bool_()),
            pa.array(meta[:, 0]), pa.array(meta[:, 1]), pa.array(meta[:, 2]), pa.array(meta[:, 3]),
            _fixed(np.tile(np.array(self.dims.latent_shape, np.int32), n), 3),
            _fixed(tensors.reshape(-1), math.prod(self.dims.latent_shape)),
        ], schema=schemas.load("latents").arrow(**self.dims.bind()["latents"]))

    def _prompts(self, components, spec: dict, ctx: ShardContext):
        import polars as pl

        from curate.ids import normalize_prompt
        from curate.train.models import encode_prompts

        ids = spec["ids"]
        found = (ctx.dataset.scan("pairs").filter(pl.col("prompt_id").is_in(ids)).select("prompt_id", "prompt")
                 .unique("prompt_id", keep="first").collect())
        texts = {prompt_id(""): "", **dict(zip(found["prompt_id"].to_list(), found["prompt"].to_list()))}
        for start in range(0, len(ids), ROWS_PER_BATCH):
            chunk = ids[start:start + ROWS_PER_BATCH]
            text, pooled = [], []
            for s in range(0, len(chunk), self.batch_size):
                t, p = encode_prompts(components, [normalize_prompt(texts[i]) for i in chunk[s:s + self.batch_size]],
                                      device=self.device)
                text.append(t.float().cpu())
                pooled.append(None if p is None else p.float().cpu())
            yield "text_embeddings", self._text_batch(chunk, text, pooled, ctx)

    def _text_batch(self, ids: list[str], text: list, pooled: list, ctx: ShardContext) -> pa.RecordBatch:
        import torch

        n = len(ids)
        text_t = torch.cat(text)
        check_finite(text_t, f"text embeddings of prompts {ids[:3]}", self.precision)
        if tuple(text_t.shape[1:]) != self.dims.text_shape:
            raise EncodeError(f"text embeddings have shape {tuple(text_t.shape[1:])}, expected {self.dims.text_shape} "
                              f"from the model's config; this text encoder is not supported")
        dims = self.dims.bind()["text_embeddings"]
        if self.dims.pooled:
            pooled_t = torch.cat(pooled)
            check_finite(pooled_t, f"pooled embeddings of prompts {ids[:3]}", self.precision)
            if pooled_t.shape[1] != self.dims.pooled:
                raise EncodeError(f"pooled embeddings have width {pooled_t.shape[1]}, expected {self.dims.pooled} "
                                  f"(text_encoder_2's projection_dim); this text encoder is not supported")
            offsets = pa.array(np.arange(n + 1, dtype=np.int32) * self.dims.pooled)
            pooled_col = pa.ListArray.from_arrays(offsets, pa.array(pooled_t.numpy().astype(np.float16).reshape(-1)))
        else:
            pooled_col = pa.nulls(n, pa.list_(pa.float16()))
        ctx.stats["prompts_encoded"] += n
        return pa.RecordBatch.from_arrays([
            pa.array(ids, pa.string()), pa.array([self.key] * n, pa.string()),
            _fixed(np.tile(np.array(self.dims.text_shape, np.int32), n), 2),
            _fixed(text_t.numpy().astype(np.float16).reshape(-1), dims["embedding"]), pooled_col,
        ], schema=schemas.load("text_embeddings").arrow(**dims))


def _fixed(flat: np.ndarray, width: int) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), width)


def check_finite(values, what: str, precision: str) -> None:
    """Stored as float16: a value beyond its range, or a NaN from the encoder, must stop the run."""
    import torch

    if not torch.isfinite(values).all() or values.abs().max() > 65504:
        hint = (" SDXL's VAE overflows in fp16: use --precision fp32 or bf16 (or a VAE fixed for fp16)"
                if precision == "fp16" else "")
        raise EncodeError(f"non-finite or out-of-float16-range {what} at --precision {precision}.{hint}")


# ---------------------------------------------------------------------------------- the run
@dataclass
class EncodeSummary:
    model: str
    key: str
    generation: int | None          # None: nothing was left to encode, no generation was started
    counts: dict[str, int]          # from planning: needed, already encoded, to encode, missing
    stats: dict[str, int]           # from the run: encoded, undecodable
    seconds: float = 0.0
    kept_shards: int = 0            # --resume: shards an interrupted run of this generation had finished


def encode_dataset(dataset_dir, model: str, *, revision: str | None = None, resolution: int = 512,
                   flip: bool = False, device: str = "cpu", precision: str = "fp32", batch_size: int = 16,
                   images_per_shard: int = 4096, prompts_per_shard: int = 4096, executor=None,
                   resume: bool = False) -> EncodeSummary:
    """Encode what the dataset's non-tie pairs need and earlier generations of this model did not write."""
    from curate.runner import LocalExecutor, run_stage

    ds = Dataset(dataset_dir)
    executor = executor or LocalExecutor()
    # Dask workers load their own copies: the driver only needs the key, and keeps its copy off the GPU.
    local = isinstance(executor, LocalExecutor)
    components, key = cached_encoders(model, revision, device if local else "cpu", precision if local else "fp32")
    dims = Dims.of(components, resolution)
    found = generations(ds, key)
    open_run = found[-1][0] if found and not found[-1][1] else None
    generation = open_run or (found[-1][0] + 1 if found else 1)
    stage = EncodeStage(model=model, key=key, generation=generation, resolution=resolution, flip=flip, dims=dims,
                        prior=committed_files(ds, key, before=generation), revision=revision, device=device,
                        precision=precision, batch_size=batch_size, images_per_shard=images_per_shard,
                        prompts_per_shard=prompts_per_shard)
    work = pending_work(ds, key, resolution, flip, stage.prior, images_per_shard, prompts_per_shard)
    if not work.specs and open_run is None:
        return EncodeSummary(model, key, None, work.counts, {})
    report = run_stage(stage, ds, executor, resume=resume)
    return EncodeSummary(model, key, generation, work.counts, report.stats, report.wall_seconds, report.skipped_shards)
