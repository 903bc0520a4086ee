"""What the training loop consumes: batches of precomputed pair latents and prompt embeddings.

The loop never runs the VAE or the text encoders. `encode_pairs` runs them once; a
`PairBatchSource` turns the results into batches and can say exactly where it is (state_dict)
so a resumed run sees the same batches an uninterrupted one would.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch


@dataclass
class PairBatch:
    """B pairs: latents of the preferred (w) and other (l) image, prompt conditioning, optional u.

    SDXL adds pooled (B, P) and time_ids (B, 6), shared by both images of a pair (same crop, same
    target size). `u` is the per-pair minority score from the data (adaptive-offline), else None;
    `weight` a per-pair loss weight from the data (pair_scores.weight), else None.
    """

    latent_w: torch.Tensor
    latent_l: torch.Tensor
    text_emb: torch.Tensor
    pair_ids: tuple[str, ...]
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None
    u: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    flagged: torch.Tensor | None = None     # bool per pair: flagged a minority sample by the data (or None)

    def to(self, device, dtype=None) -> "PairBatch":
        move = lambda x, d=dtype: None if x is None else x.to(device, d)  # noqa: E731
        return replace(self, latent_w=move(self.latent_w), latent_l=move(self.latent_l),
                       text_emb=move(self.text_emb), pooled=move(self.pooled),
                       time_ids=move(self.time_ids, None), u=move(self.u, None), weight=move(self.weight, None),
                       flagged=move(self.flagged, None))

    def __len__(self) -> int:
        return len(self.pair_ids)


@runtime_checkable
class PairBatchSource(Protocol):
    """An endless iterator of PairBatch (epochs follow each other) with an exact, restorable position.

    `dropped` counts the pairs that will never be trained, by reason (ties, missing encodings).
    `empty_prompt` is the empty prompt's (text_emb, pooled or None), for prompt dropout, or None.
    The position is global (see position_state): a run resumes on any number of processes.
    """

    dropped: Counter
    empty_prompt: tuple | None

    def __iter__(self) -> Iterator[PairBatch]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def latent_key(image_id: str, flipped: bool = False) -> str:
    """Key of an image's latent; a horizontally flipped encoding is a different latent."""
    return f"{image_id}:flip" if flipped else image_id


def epoch_batches(n_pairs: int, batch_size: int, world_size: int, grad_accum: int) -> int:
    """Batches per epoch of one process: whole optimizer steps only, so an epoch ends at the same
    pair under any split of a step's pairs between processes and accumulation (the permutation's
    last n mod (batch x accum x processes) pairs sit that epoch out)."""
    return n_pairs // (batch_size * world_size * grad_accum) * grad_accum


def position_state(epoch: int, cursor: int, world_size: int, grad_accum: int) -> dict:
    """Where a source is, in global batches: rank r's cursor c is the world_size * c-th global batch."""
    return {"epoch": epoch, "global_batches": cursor * world_size, "world_size": world_size, "grad_accum": grad_accum}


def restore_position(state: dict, world_size: int) -> tuple[int, int]:
    """(epoch, cursor) of a position saved under any number of processes."""
    done = int(state["global_batches"])
    if done % world_size:
        raise ValueError(f"the data position was saved {done} batches into epoch {state['epoch']} under "
                         f"{state['world_size']} processes, which {world_size} processes cannot reach; resume with "
                         f"{state['world_size']}")
    return int(state["epoch"]), done // world_size


class InMemoryPairSource:
    """Pairs (dicts with pair_id, prompt_id, image_a_id, image_b_id, label in a/b/tie, optional u,
    flagged and flip) over in-memory latents (by latent_key) and prompt embeddings (by prompt_id: a
    tensor (L, D), or (text_emb, pooled) for SDXL; `time_ids` by latent_key (or image_id) for SDXL).

    Ties are dropped and counted, never trained as "image a wins". Each epoch is a fresh permutation
    drawn from (seed, epoch); only full batches are yielded (Adaptive-DPO normalises over the batch).
    With world_size > 1, rank r takes every world_size-th batch; an epoch holds whole optimizer
    steps of grad_accum batches per process (see epoch_batches).
    """

    def __init__(self, pairs: Sequence[Mapping], latents: Mapping[str, torch.Tensor], prompts: Mapping,
                 batch_size: int, *, time_ids: Mapping[str, torch.Tensor] | None = None, seed: int = 0,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1, grad_accum: int = 1,
                 empty_prompt: tuple | None = None):
        self.latents, self.prompts, self.time_ids, self.empty_prompt = latents, prompts, time_ids, empty_prompt
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum
        self.dropped: Counter = Counter()
        self.pairs = [p for p in pairs if self._keep(p)]
        self.batches_per_epoch = epoch_batches(len(self.pairs), batch_size, world_size, grad_accum)
        if self.batches_per_epoch == 0:
            raise ValueError(f"{len(self.pairs)} trainable pairs (dropped: {dict(self.dropped)}) do not fill one step "
                             f"of {batch_size} x {grad_accum} accumulation x {world_size} processes; lower batch_size "
                             "or add pairs")
        self.epoch, self.cursor = 0, 0

    def _keep(self, pair: Mapping) -> bool:
        label = pair["label"]
        if label not in ("a", "b", "tie"):
            raise ValueError(f"pair {pair['pair_id']}: label {label!r}; expected a, b or tie")
        flip = bool(pair.get("flip", False))
        reason = ("tie" if label == "tie"
                  else "missing_latent" if any(latent_key(pair[k], flip) not in self.latents
                                               for k in ("image_a_id", "image_b_id"))
                  else "missing_prompt_embedding" if pair["prompt_id"] not in self.prompts
                  else None)
        if reason:
            self.dropped[reason] += 1
        return reason is None

    def __iter__(self) -> Iterator[PairBatch]:
        while True:
            order = self._order(self.epoch)
            while self.cursor < self.batches_per_epoch:
                start = (self.cursor * self.world_size + self.rank) * self.batch_size
                batch = self._collate([self.pairs[i] for i in order[start:start + self.batch_size]])
                self.cursor += 1  # advanced before yielding: state_dict() names the next batch
                yield batch
            self.epoch, self.cursor = self.epoch + 1, 0

    def _order(self, epoch: int) -> list[int]:
        return epoch_order(len(self.pairs), self.seed, epoch, self.shuffle)

    def _collate(self, pairs: list[Mapping]) -> PairBatch:
        def latent(p, side):
            return self.latents[latent_key(p[side], bool(p.get("flip", False)))]

        def time_ids(p, side):
            key = latent_key(p[side], bool(p.get("flip", False)))
            return self.time_ids[key if key in self.time_ids else p[side]]

        winners = [("image_a_id", "image_b_id") if p["label"] == "a" else ("image_b_id", "image_a_id") for p in pairs]
        prompts = [self.prompts[p["prompt_id"]] for p in pairs]
        sdxl = isinstance(prompts[0], (tuple, list))
        has_u = [p.get("u") is not None for p in pairs]
        return PairBatch(
            latent_w=torch.stack([latent(p, w) for p, (w, _) in zip(pairs, winners)]),
            latent_l=torch.stack([latent(p, l) for p, (_, l) in zip(pairs, winners)]),
            text_emb=torch.stack([e[0] if sdxl else e for e in prompts]),
            pooled=torch.stack([e[1] for e in prompts]) if sdxl else None,
            time_ids=torch.stack([time_ids(p, w) for p, (w, _) in zip(pairs, winners)]) if sdxl else None,
            u=torch.tensor([float(p["u"]) for p in pairs]) if all(has_u) else None,
            flagged=torch.tensor([bool(p["flagged"]) for p in pairs]) if all("flagged" in p for p in pairs) else None,
            pair_ids=tuple(p["pair_id"] for p in pairs),
        )

    def state_dict(self) -> dict:
        return {**position_state(self.epoch, self.cursor, self.world_size, self.grad_accum), "seed": self.seed,
                "pairs": len(self.pairs), "batch_size": self.batch_size,
                "pairs_per_step": self.batch_size * self.world_size * self.grad_accum}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("seed", "pairs", "batch_size", "pairs_per_step"):
            if state.get(key) != mine[key]:
                raise ValueError(f"data position was saved with {key}={state.get(key)}, this source has {mine[key]}; "
                                 "resume with the same pairs and settings")
        self.epoch, self.cursor = restore_position(state, self.world_size)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The order of n pairs in one epoch: a permutation drawn from (seed, epoch) alone, so any
    position of any epoch can be restored without replaying the ones before it."""
    if not shuffle:
        return list(range(n))
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


# ---------------------------------------------------------------- encoding, run once before training

@dataclass
class EncodedPairs:
    """Output of encode_pairs: the inputs of InMemoryPairSource."""

    pairs: list[dict]
    latents: dict[str, torch.Tensor] = field(default_factory=dict)
    prompts: dict[str, object] = field(default_factory=dict)
    time_ids: dict[str, torch.Tensor] | None = None
    empty_prompt: tuple | None = None       # (text_emb, pooled or None) of "", for prompt dropout

    def source(self, batch_size: int, **kwargs) -> InMemoryPairSource:
        return InMemoryPairSource(self.pairs, self.latents, self.prompts, batch_size, time_ids=self.time_ids,
                                  empty_prompt=self.empty_prompt, **kwargs)

    def save(self, path: str | Path) -> Path:
        """A folder of safetensors (latents, prompts, time_ids) + pairs.jsonl, written then renamed."""
        import json
        import os
        import shutil
        import uuid

        from safetensors.torch import save_file

        path = Path(path)
        tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in self.latents.items()}, str(tmp / "latents.safetensors"))
        prompts = {}
        everything = {**self.prompts, **({_EMPTY: self.empty_prompt} if self.empty_prompt is not None else {})}
        for pid, emb in everything.items():
            if isinstance(emb, (tuple, list)) and emb[1] is not None:
                prompts[pid], prompts[pid + _POOLED] = emb
            elif isinstance(emb, (tuple, list)):
                prompts[pid] = emb[0]
            else:
                prompts[pid] = emb
        save_file({k: v.contiguous() for k, v in prompts.items()}, str(tmp / "prompts.safetensors"))
        if self.time_ids is not None:
            save_file(dict(self.time_ids), str(tmp / "time_ids.safetensors"))
        (tmp / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in self.pairs))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "EncodedPairs":
        import json

        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "pairs.jsonl").exists():
            raise FileNotFoundError(f"{path} holds no pairs.jsonl; expected a folder written by EncodedPairs.save")
        raw = load_file(str(path / "prompts.safetensors"))
        prompts = {k: (v, raw[k + _POOLED]) if k + _POOLED in raw else v
                   for k, v in raw.items() if not k.endswith(_POOLED)}
        empty = prompts.pop(_EMPTY, None)
        times = path / "time_ids.safetensors"
        return cls(pairs=[json.loads(line) for line in (path / "pairs.jsonl").read_text().splitlines() if line],
                   latents=load_file(str(path / "latents.safetensors")), prompts=prompts,
                   time_ids=load_file(str(times)) if times.exists() else None,
                   empty_prompt=empty if isinstance(empty, tuple) or empty is None else (empty, None))


_POOLED = "::pooled"
_EMPTY = "::empty"


@torch.no_grad()
def encode_pairs(components, pairs: Sequence[Mapping], images: Mapping[str, object], prompts: Mapping[str, str],
                 *, resolution: int, random_flip: bool = False, seed: int = 0, device="cpu",
                 batch_size: int = 8) -> EncodedPairs:
    """Run the VAE and text encoders once over the images and prompts of `pairs`.

    Images (PIL, by image_id) are resized (short side) and centre-cropped to `resolution`. With
    random_flip, the flip is decided per pair from (seed, pair_id), so both images of a pair get
    the same transform. Latents are scaled by the VAE's scaling_factor, in fp32 on the CPU. SDXL
    time ids are kept per latent (a flipped one mirrors its crop), and the empty prompt is encoded
    too (prompt dropout trains on it).
    """
    from curate.train.models import encode_prompts, flipped_crop_left, sdxl_time_ids

    out = EncodedPairs(pairs=[], time_ids={} if components.is_sdxl else None)
    todo: dict[str, tuple[str, bool]] = {}
    for pair in pairs:
        flip = random_flip and _coin(seed, pair["pair_id"])
        out.pairs.append({**pair, "flip": flip})
        if pair["label"] == "tie":
            continue  # never trained: no need to encode
        for key in ("image_a_id", "image_b_id"):
            todo[latent_key(pair[key], flip)] = (pair[key], flip)
    keys = list(todo)
    for start in range(0, len(keys), batch_size):
        chunk = keys[start:start + batch_size]
        pixels = []
        for k in chunk:
            image_id, flip = todo[k]
            pixels.append(to_pixels(images[image_id], resolution, flip))
            if out.time_ids is not None:
                size = images[image_id].size  # (W, H)
                top, left = crop_top_left(size, resolution)
                left = flipped_crop_left(left, resolution) if flip else left
                out.time_ids[k] = sdxl_time_ids((size[1], size[0]), (top, left), (resolution, resolution))
        vae = components.vae
        dist = vae.encode(torch.stack(pixels).to(device, vae.dtype)).latent_dist
        # The mean, not a sample: one deterministic latent per image keeps resume and reruns exact.
        for k, z in zip(chunk, (dist.mean * vae.config.scaling_factor).float().cpu()):
            out.latents[k] = z
    ids = sorted({p["prompt_id"] for p in out.pairs if p["label"] != "tie"})
    text, pooled = encode_prompts(components, [""], device=device)
    out.empty_prompt = (text[0].float().cpu(), None if pooled is None else pooled[0].float().cpu())
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        text, pooled = encode_prompts(components, [prompts[i] for i in chunk], device=device)
        for j, pid in enumerate(chunk):
            out.prompts[pid] = text[j].float().cpu() if pooled is None else (text[j].float().cpu(), pooled[j].float().cpu())
    return out


def _coin(seed: int, pair_id: str) -> bool:
    return hashlib.sha256(f"{seed}:{pair_id}".encode()).digest()[0] & 1 == 1


def crop_top_left(size, resolution: int) -> tuple[int, int]:
    """(top, left) of the centre crop, in resized pixels, exactly as torchvision's resize + center_crop."""
    w, h = size
    new_w, new_h = (resolution, int(resolution * h / w)) if w <= h else (int(resolution * w / h), resolution)
    return int(round((new_h - resolution) / 2)), int(round((new_w - resolution) / 2))


def to_pixels(image, resolution: int, flip: bool = False) -> torch.Tensor:
    from torchvision.transforms import functional as TF

    image = TF.center_crop(TF.resize(image.convert("RGB"), resolution), resolution)
    if flip:
        image = TF.hflip(image)
    return TF.to_tensor(image) * 2.0 - 1.0  # the VAE expects [-1, 1]
