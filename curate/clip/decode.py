"""Decoding image bytes into model-ready tensors in worker processes.

``decoded_batches`` yields ``(image_ids, pixels, failures)`` per batch, in the order of the work
list whatever the worker count: batch k goes to worker k mod n, and the DataLoader collects from
workers round-robin. A worker reads rows straight from the memory-mapped images shard, so only
the shard path and row numbers cross the process boundary, never the bytes.
"""
from __future__ import annotations

import re

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from curate.dataset import read_shard
from curate.images import decode_image


_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")  # addresses would make the output bytes vary per run


class PixelPipeline:
    """open_clip's preprocess split in two: resize/crop to uint8 in the workers, normalise in the batch.

    Workers then ship uint8 (4x less than float through shared memory) and skip the per-image
    float conversion, which costs more than the resize; the main process normalises a whole batch
    in one vectorised op. A preprocess of another shape runs whole in the workers.
    """

    def __init__(self, preprocess):
        from torchvision.transforms import Compose, Normalize

        steps = list(preprocess.transforms) if isinstance(preprocess, Compose) else []
        tail = [type(t).__name__ for t in steps[-2:]]
        self.split = len(steps) >= 2 and tail[0] in ("ToTensor", "MaybeToTensor") and isinstance(steps[-1], Normalize)
        self.geometry = Compose(steps[:-2]) if self.split else preprocess
        self.mean = torch.tensor(steps[-1].mean).view(1, -1, 1, 1) * 255 if self.split else None
        self.std = torch.tensor(steps[-1].std).view(1, -1, 1, 1) * 255 if self.split else None
        sizes = [getattr(t, "size", None) for t in steps if type(t).__name__ == "Resize"]
        size = sizes[0] if sizes else None
        self.min_side = (min(size) if isinstance(size, (tuple, list)) else size) if size else None

    def to_pixels(self, data: bytes) -> torch.Tensor:
        image = self.geometry(decode_image(data, self.min_side))
        if not self.split:
            return image
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)

    def finish(self, batch: torch.Tensor) -> torch.Tensor:
        return (batch.float() - self.mean) / self.std if self.split else batch


def decode_rows(image_ids, blobs, pipeline: PixelPipeline) -> tuple[list[str], torch.Tensor | None, list[tuple[str, str, str]]]:
    """Decode and preprocess one batch; a bad image becomes a failure (id, reason, message), not an error."""
    ok_ids, tensors, failures = [], [], []
    for image_id, data in zip(image_ids, blobs):
        try:
            tensors.append(pipeline.to_pixels(data))
            ok_ids.append(image_id)
        except Exception as e:  # any decoder error is a property of this image: record it, go on
            reason = "empty_image" if not data else "undecodable_image"
            failures.append((image_id, reason, _OBJECT_REPR.sub("<bytes>", f"{type(e).__name__}: {e}")[:500]))
    return ok_ids, (torch.stack(tensors) if tensors else None), failures


class _ShardRows(IterableDataset):
    """Batches of (shard, rows) work, each worker taking every n-th batch."""

    def __init__(self, work: list[tuple[str, list[int]]], pipeline: PixelPipeline, batch_size: int):
        self.work, self.pipeline, self.batch_size = work, pipeline, batch_size

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        k = 0
        for path, rows in self.work:
            table = None
            for start in range(0, len(rows), self.batch_size):
                if k % workers == worker:
                    table = table if table is not None else read_shard(path, ["image_id", "bytes"])
                    take = table.take(rows[start: start + self.batch_size])
                    yield decode_rows(take["image_id"].to_pylist(), take["bytes"].to_pylist(), self.pipeline)
                k += 1


def _as_is(item):
    return item  # batches are already built by the dataset; module-level so spawn can pickle it


def decoded_batches(work, pipeline: PixelPipeline, batch_size: int, workers: int, pin_memory: bool = False):
    """Decoded batches of the work list (uint8 when the pipeline splits; see ``PixelPipeline.finish``);
    ``workers`` = 0 decodes in this process."""
    loader = DataLoader(_ShardRows(work, pipeline, batch_size), batch_size=None, num_workers=workers,
                        pin_memory=pin_memory, prefetch_factor=4 if workers else None,
                        collate_fn=_as_is)
    yield from loader
