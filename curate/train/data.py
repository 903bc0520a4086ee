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
from typing import Protocol, runtime_checkable

import torch

from curate.train.sampler import PairSampler
from curate.train.vae import crop_top_left, to_pixels, vae_latents


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
    The position is global (see sampler.PairSampler): a run resumes on any number of processes.
    """

    dropped: Counter
    empty_prompt: tuple | None

    def __iter__(self) -> Iterator[PairBatch]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def latent_key(image_id: str, flipped: bool = False) -> str:
    """Key of an image's latent; a horizontally flipped encoding is a different latent."""
    return f"{image_id}:flip" if flipped else image_id


class InMemoryPairSource:
    """Pairs (dicts with pair_id, prompt_id, image_a_id, image_b_id, label in a/b/tie, optional u,
    flagged and flip) over in-memory latents (by latent_key) and prompt embeddings (by prompt_id: a
    tensor (L, D), or (text_emb, pooled) for SDXL; `time_ids` by latent_key (or image_id) for SDXL).

    Ties are dropped and counted, never trained as "image a wins". Batches and the position are the
    PairSampler's (curate.train.sampler), as for DatasetPairSource.
    """

    def __init__(self, pairs: Sequence[Mapping], latents: Mapping[str, torch.Tensor], prompts: Mapping,
                 batch_size: int, *, time_ids: Mapping[str, torch.Tensor] | None = None, seed: int = 0,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1, grad_accum: int = 1,
                 empty_prompt: tuple | None = None):
        self.latents, self.prompts, self.time_ids, self.empty_prompt = latents, prompts, time_ids, empty_prompt
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum  # checked by the loop
        self.dropped: Counter = Counter()
        self.pairs = [p for p in pairs if self._keep(p)]
        try:
            self.sampler = PairSampler(len(self.pairs), batch_size, seed=seed, shuffle=shuffle, rank=rank,
                                       world_size=world_size, grad_accum=grad_accum)
        except ValueError as err:
            raise ValueError(f"{err} (dropped: {dict(self.dropped)})") from None

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
        for idx, _ in self.sampler:  # a pair's flip was decided when it was encoded (encode_pairs)
            yield self._collate([self.pairs[i] for i in idx])

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
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


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


@torch.no_grad()
def encode_pairs(components, pairs: Sequence[Mapping], images: Mapping[str, object], prompts: Mapping[str, str],
                 *, resolution: int, random_flip: bool = False, seed: int = 0, device="cpu",
                 batch_size: int = 8) -> EncodedPairs:
    """Run the VAE and text encoders once over the images and prompts of `pairs`.

    Images (PIL, by image_id) are resized (short side) and centre-cropped to `resolution`. With
    random_flip, the flip is decided per pair from (seed, pair_id), so both images of a pair get
    the same transform. Latents as the encode stage makes them (curate.train.vae.vae_latents). SDXL
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
        for k, z in zip(chunk, vae_latents(components.vae, torch.stack(pixels), device)):
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


