"""The world judge: read a scene and its rendering quality off a small image, so generated images get ground truth.

The world's renders are flat-coloured shapes on a flat background, so an analytic detector does:
1. background = the world background nearest to the median border colour;
2. each pixel of a 3x3-median-filtered copy goes to the nearest of {background, 7 palette colours};
3. connected regions of one palette colour (>= MIN_AREA px) are objects; the two largest are kept;
4. an object's shape and size come from its nearest template: its alpha (how far each pixel sits
   from the background towards the object's colour) in a window centred on it, against the same
   window over the world's own renders of every (shape, size) (``prototypes``), not hand-set rules;
5. one object: its position is the nearest of the world's anchor points; two: their relation is
   the larger of the horizontal and vertical centroid offsets.
Quality: noise from the spread of what a median filter removes; blur from how wide the
colour transitions at object edges are, relative to clean and to fully blurred renders. Both map
onto the world's ``quality_values`` formula. ``reward`` = the world's ``true_reward``.

How well this reads the world's own renders is measured, not assumed: ``detector_accuracy``.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

from curate.synth import scene as sc

MIN_AREA = 5
_PALETTE = np.array([sc.COLOURS[c] for c in sc.COLOUR_NAMES], dtype=np.float32)
_BACKGROUNDS = np.array([sc.BACKGROUNDS[b] for b in sc.BACKGROUND_NAMES], dtype=np.float32)
_ANCHORS = {name: np.array(xy) for name, xy in
            {"left": (0.28, 0.5), "right": (0.72, 0.5), "top": (0.5, 0.28), "bottom": (0.5, 0.72), "center": (0.5, 0.5)}.items()}


def _nearest(colours: np.ndarray, table: np.ndarray) -> np.ndarray:
    return np.argmin(((colours[..., None, :] - table) ** 2).sum(-1), axis=-1)


def _segment(image: np.ndarray):
    """(background code, label map over {-1 = background, palette index}, median-filtered image)."""
    smooth = ndimage.median_filter(image.astype(np.float32), size=(3, 3, 1))
    border = np.concatenate([smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1]])
    bg = int(_nearest(np.median(border, axis=0), _BACKGROUNDS))
    table = np.concatenate([_BACKGROUNDS[bg:bg + 1], _PALETTE])
    labels = _nearest(smooth, table) - 1
    return bg, labels, smooth


def _objects(labels: np.ndarray) -> list[dict]:
    """Connected regions per palette colour, largest first."""
    found = []
    for colour in np.unique(labels[labels >= 0]):
        regions, n = ndimage.label(labels == colour)
        for k in range(1, n + 1):
            ys, xs = np.nonzero(regions == k)
            if len(ys) >= MIN_AREA:
                found.append({"colour": int(colour), "ys": ys, "xs": xs, "area": len(ys)})
    return sorted(found, key=lambda o: -o["area"])


PATCH = 8  # half-width of the object patch compared with templates (large shapes span ~13 px at 32 px)


def _alpha(smooth: np.ndarray, bg: int, colour: int) -> np.ndarray:
    """Per pixel, how far it sits from the background towards the object colour (0..1)."""
    back = _BACKGROUNDS[bg]
    direction = _PALETTE[colour] - back
    return np.clip(((smooth - back) @ direction) / max(float(direction @ direction), 1.0), 0.0, 1.0)


def _patch(smooth: np.ndarray, labels: np.ndarray, bg: int, obj: dict) -> np.ndarray:
    """The object's alpha in a (2 PATCH + 1)^2 window centred on its centroid, other objects masked out."""
    own = np.zeros(labels.shape, bool)
    own[obj["ys"], obj["xs"]] = True
    alpha = _alpha(smooth, bg, obj["colour"]) * ndimage.binary_dilation(own, iterations=2)
    padded = np.pad(alpha, PATCH)
    cy, cx = int(round(obj["ys"].mean())) + PATCH, int(round(obj["xs"].mean())) + PATCH
    return padded[cy - PATCH: cy + PATCH + 1, cx - PATCH: cx + PATCH + 1].ravel()


@lru_cache(maxsize=4)
def prototypes(side: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Template patches of every (shape, size), from the world's renders with a few jitters and blurs."""
    patches, keys = [], []
    for s, shape in enumerate(sc.SHAPES):
        for z, size in enumerate(sc.SIZES):
            for seed in range(12):
                scene = sc.Scene((sc.Obj(shape, "blue", size),), "center", "white")
                image = np.asarray(sc.render(scene, sc.QualityParams(blur=0.5 * (seed % 4)), side, seed))
                bg, labels, smooth = _segment(image)
                objs = _objects(labels)
                if objs:
                    patches.append(_patch(smooth, labels, bg, objs[0]))
                    keys.append((s, z))
    return np.array(patches), keys


def read_scene(image: np.ndarray) -> np.ndarray:
    """Scene code row (``sc.CODE_COLUMNS``) of an (H, W, 3) uint8 image; n_objects may be 0."""
    side = image.shape[0]
    bg, labels, smooth = _segment(image)
    objs = _objects(labels)[:2]
    row = np.full(len(sc.CODE_COLUMNS), sc.MISSING, dtype=np.int16)
    row[sc.N_OBJ], row[sc.BG] = len(objs), bg
    protos, keys = prototypes(side)
    centres = []
    for k, obj in enumerate(objs):
        shape, size = keys[int(np.argmin(((protos - _patch(smooth, labels, bg, obj)) ** 2).sum(1)))]
        row[1 + 3 * k: 4 + 3 * k] = shape, obj["colour"], size
        centres.append(np.array([obj["xs"].mean(), obj["ys"].mean()]) / (side - 1))
    if len(objs) == 1:
        names = list(_ANCHORS)
        row[sc.LAYOUT] = sc.LAYOUTS.index(names[int(np.argmin([np.sum((centres[0] - _ANCHORS[n]) ** 2) for n in names]))])
    elif len(objs) == 2:
        dx, dy = centres[0] - centres[1]
        relation = ("left of" if dx < 0 else "right of") if abs(dx) >= abs(dy) else ("above" if dy < 0 else "below")
        row[sc.LAYOUT] = sc.LAYOUTS.index(relation)
    return row


def _edge_width(image: np.ndarray, labels: np.ndarray, bg: int) -> float:
    """Mean transition width (px) of object edges: intermediate pixels per boundary pixel."""
    px = image.astype(np.float32)
    back = _BACKGROUNDS[bg]
    widths = []
    for colour in np.unique(labels[labels >= 0]):
        mask = labels == colour
        ring = ndimage.binary_dilation(mask, iterations=3) & ~ndimage.binary_erosion(mask, iterations=3)
        direction = _PALETTE[colour] - back
        alpha = ((px - back) @ direction) / max(float(direction @ direction), 1.0)
        inside = (alpha > 0.5) & ring
        boundary = (inside & ~ndimage.binary_erosion(alpha > 0.5)).sum()
        between = (ring & (alpha > 0.15) & (alpha < 0.85)).sum()
        if boundary:
            widths.append(between / boundary)
    return float(np.mean(widths)) if widths else np.nan


def _defects(image: np.ndarray) -> tuple[float, float]:
    """(noise std as a fraction of 255, edge width in px) of one image.

    Noise is the robust spread (MAD) of what a 3x3 median filter removes, over all pixels: flat
    regions dominate a render, so edges barely move the median, and an image that is noise all over
    (no background left to measure) still reads as noisy. ``noise_calibration`` maps it to the std.
    """
    bg, labels, smooth = _segment(image)
    residual = image.astype(np.float32) - smooth
    spread = float(np.median(np.abs(residual)) * 1.4826 / 255)
    return spread * noise_calibration(image.shape[0]), _edge_width(image, labels, bg)


@lru_cache(maxsize=4)
def noise_calibration(side: int) -> float:
    """True noise std / measured spread, on renders with the world's mid-range noise."""
    from curate.synth.pool import random_scenes

    codes = random_scenes(np.random.default_rng(6), 16)
    ratios = []
    for i, c in enumerate(codes):
        image = np.asarray(sc.render(sc.Scene.from_codes(c), sc.QualityParams(noise=0.12), side, i)).astype(np.float32)
        smooth = ndimage.median_filter(image, size=(3, 3, 1))
        ratios.append(0.12 / (np.median(np.abs(image - smooth)) * 1.4826 / 255))
    return float(np.median(ratios))


@lru_cache(maxsize=4)
def edge_calibration(side: int) -> tuple[float, float]:
    """Edge width of clean renders and of renders at the world's full blur (BLUR_MAX)."""
    rng = np.random.default_rng(5)
    from curate.synth.pool import random_scenes

    codes = random_scenes(rng, 24)
    widths = {}
    for blur in (0.0, sc.BLUR_MAX):
        w = [_defects(np.asarray(sc.render(sc.Scene.from_codes(c), sc.QualityParams(blur=blur), side, i)))[1]
             for i, c in enumerate(codes)]
        widths[blur] = float(np.nanmean(w))
    return widths[0.0], widths[sc.BLUR_MAX]


def read_quality(image: np.ndarray) -> float:
    noise, width = _defects(image)
    clean, blurred = edge_calibration(image.shape[0])
    blur = 0.0 if np.isnan(width) else (width - clean) / (blurred - clean) * sc.BLUR_MAX
    return float(sc.quality_values(max(blur, 0.0), noise, 100))


def judge_images(images: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """fidelity (to each target scene code row), quality, purple share and true reward per image."""
    scenes = np.stack([read_scene(im) for im in images])
    fidelity = sc.fidelity_codes(targets, scenes)
    quality = np.array([read_quality(im) for im in images])
    purple = sc.COLOUR_NAMES.index("purple")
    n = np.maximum(scenes[:, sc.N_OBJ], 1)
    purple_share = ((scenes[:, sc.COLOUR0] == purple).astype(float) + (scenes[:, sc.COLOUR1] == purple)) / n
    return {"scenes": scenes, "fidelity": fidelity, "quality": quality, "purple": purple_share,
            "reward": sc.true_reward(fidelity, quality)}


def detector_accuracy(n: int = 200, side: int = 32, seed: int = 0) -> dict[str, float]:
    """How well the judge reads the world's own renders (pool candidates, JPEG off)."""
    from scipy.stats import spearmanr

    from curate.synth.pool import make_pool

    pool = make_pool(np.random.default_rng([seed, 99]), max(n // 4, 1), 4)
    images = np.stack([np.asarray(sc.render(pool.scene(i), sc.QualityParams(float(pool.blur[i]), float(pool.noise[i]), 100),
                                            side, int(pool.seed[i]))) for i in range(pool.n_images)])
    got = judge_images(images, pool.codes)
    true_quality = sc.quality_values(pool.blur, pool.noise, 100)
    own_target = np.repeat(pool.targets, pool.per_prompt, axis=0)
    est_fid = sc.fidelity_codes(own_target, got["scenes"])
    return {"scene_read_fidelity": float(got["fidelity"].mean()),
            "exact_scene": float((got["fidelity"] == 1).mean()),
            "fidelity_corr": float(np.corrcoef(est_fid, pool.fidelity)[0, 1]),
            "quality_spearman": float(spearmanr(got["quality"], true_quality).statistic),
            "quality_mae": float(np.abs(got["quality"] - true_quality).mean()),
            "reward_corr": float(np.corrcoef(sc.true_reward(est_fid, got["quality"]),
                                             sc.true_reward(pool.fidelity, true_quality))[0, 1])}
