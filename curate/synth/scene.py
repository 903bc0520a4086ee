"""Scenes of coloured shapes: the vocabulary, prompts, rendering and the analytic ground truth.

A scene is one or two objects (shape, colour, size) on a background. One object sits at a
position ("left", ..., "center"); two objects are placed by a relation ("left of", "above", ...).
Scenes also travel as integer code rows (``CODE_COLUMNS``) so a pool of millions of images can be
scored with numpy; ``Scene.codes`` / ``Scene.from_codes`` convert, and every formula here has ONE
implementation on code arrays that the scalar helpers call.

Ground truth, all in [0, 1]:
- ``fidelity(target, image)``: share of scene attributes the image gets right (1 iff same scene).
- ``quality(params)``: how clean the rendering is (1 = no blur, no noise, no JPEG artefacts).
- ``true_reward = W_FIDELITY * fidelity + W_QUALITY * quality``: the majority's taste.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "star", "diamond")
COLOURS = {
    "red": (214, 39, 40), "orange": (255, 127, 14), "yellow": (232, 202, 24), "green": (44, 160, 44),
    "blue": (31, 119, 180), "purple": (148, 83, 199), "pink": (237, 119, 194),
}
COLOUR_NAMES = tuple(COLOURS)
BACKGROUNDS = {"white": (250, 250, 250), "grey": (140, 140, 140), "black": (24, 24, 24), "cream": (240, 228, 196)}
BACKGROUND_NAMES = tuple(BACKGROUNDS)
SIZES = ("small", "large")
RELATIONS = ("left of", "right of", "above", "below")
POSITIONS = ("left", "right", "top", "bottom", "center")
LAYOUTS = RELATIONS + POSITIONS  # one code column: relations for two objects, positions for one
_INVERSE_LAYOUT = np.array([1, 0, 3, 2, 4, 5, 6, 7, 8], dtype=np.int16)  # a position is its own inverse
_POSITION_PHRASE = {
    "left": "on the left side of", "right": "on the right side of", "top": "at the top of",
    "bottom": "at the bottom of", "center": "in the middle of",
}

CODE_COLUMNS = ("n_objects", "shape_0", "colour_0", "size_0", "shape_1", "colour_1", "size_1", "layout", "background")
N_OBJ, SHAPE0, COLOUR0, SIZE0, SHAPE1, COLOUR1, SIZE1, LAYOUT, BG = range(len(CODE_COLUMNS))
MISSING = -1  # code of every attribute of an absent second object

W_FIDELITY = 0.6
W_QUALITY = 0.4
BLUR_MAX = 2.5  # Gaussian radius in pixels at 64 px at which blur alone makes quality 0
NOISE_MAX = 0.25  # noise std (fraction of 255) at which noise alone makes quality 0
JPEG_CLEAN, JPEG_WORST = 95, 5  # JPEG quality with no defect / full defect; 100 means "not compressed"


def _check(value: str, allowed, what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str

    def __post_init__(self):
        _check(self.shape, SHAPES, "shape")
        _check(self.colour, COLOUR_NAMES, "colour")
        _check(self.size, SIZES, "size")


@dataclass(frozen=True)
class Scene:
    """``layout`` is a position (one object) or a relation of objects[0] to objects[1] (two objects)."""

    objects: tuple[Obj, ...]
    layout: str
    background: str = "white"

    def __post_init__(self):
        if len(self.objects) not in (1, 2):
            raise ValueError(f"a scene has 1 or 2 objects, got {len(self.objects)}")
        _check(self.layout, POSITIONS if len(self.objects) == 1 else RELATIONS, "layout")
        _check(self.background, BACKGROUND_NAMES, "background")

    def codes(self) -> np.ndarray:
        row = np.full(len(CODE_COLUMNS), MISSING, dtype=np.int16)
        row[N_OBJ] = len(self.objects)
        for k, obj in enumerate(self.objects):
            row[1 + 3 * k: 4 + 3 * k] = SHAPES.index(obj.shape), COLOUR_NAMES.index(obj.colour), SIZES.index(obj.size)
        row[LAYOUT] = LAYOUTS.index(self.layout)
        row[BG] = BACKGROUND_NAMES.index(self.background)
        return row

    @classmethod
    def from_codes(cls, row) -> Scene:
        objects = tuple(
            Obj(SHAPES[row[1 + 3 * k]], COLOUR_NAMES[row[2 + 3 * k]], SIZES[row[3 + 3 * k]]) for k in range(int(row[N_OBJ]))
        )
        return cls(objects, LAYOUTS[row[LAYOUT]], BACKGROUND_NAMES[row[BG]])


@dataclass(frozen=True)
class QualityParams:
    """Degradations applied after drawing: Gaussian blur (radius in px at 64 px, scaled with the
    image size), additive Gaussian noise (std as a fraction of 255) and a JPEG round trip at
    ``jpeg_quality`` (100 = none)."""

    blur: float = 0.0
    noise: float = 0.0
    jpeg_quality: int = 100


def prompt_for(scene: Scene) -> str:
    """The canonical prompt: 'a large red circle left of a small blue triangle on a white background'."""
    return str(prompts_for_codes(scene.codes()[None, :])[0])


def _words(vocab) -> np.ndarray:
    return np.array(list(vocab) + [""], dtype=object)  # code -1 (MISSING) picks the trailing ""


def prompts_for_codes(codes: np.ndarray) -> np.ndarray:
    """Vectorised ``prompt_for`` over scene code rows (an object array of str)."""
    codes = np.atleast_2d(codes)

    def obj(k: int) -> np.ndarray:
        return ("a " + _words(SIZES)[codes[:, 3 + 3 * k]] + " " + _words(COLOUR_NAMES)[codes[:, 2 + 3 * k]]
                + " " + _words(SHAPES)[codes[:, 1 + 3 * k]])

    layout = codes[:, LAYOUT]
    relation = " " + _words(LAYOUTS)[layout] + " " + obj(1) + " on a "
    position = " " + _words([_POSITION_PHRASE.get(name, "") for name in LAYOUTS])[layout] + " a "
    return obj(0) + np.where(codes[:, N_OBJ] == 2, relation, position) + _words(BACKGROUND_NAMES)[codes[:, BG]] + " background"


def _object_matches(t: np.ndarray, s: np.ndarray, kt: int, ks: int) -> np.ndarray:
    """Attributes (of 3) object ``kt`` of the targets shares with object ``ks`` of the images; 0 if either is absent."""
    present = (t[:, 1 + 3 * kt] != MISSING) & (s[:, 1 + 3 * ks] != MISSING)
    same = sum((t[:, a + 3 * kt] == s[:, a + 3 * ks]).astype(np.int16) for a in (1, 2, 3))
    return np.where(present, same, 0)


def fidelity_codes(targets: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Vectorised fidelity of image scenes to target scenes (code rows, broadcast together).

    Matched attributes / attributes of the larger scene, where attributes are 3 per object (shape,
    colour, size), the layout and the background. Objects are aligned directly or swapped (with the
    relation inverted: 'A left of B' is 'B right of A'), whichever matches more. A scene with a
    different number of objects never matches the layout. Fidelity is 1 iff the scenes are equal.
    """
    t, s = np.broadcast_arrays(np.atleast_2d(targets), np.atleast_2d(images))
    direct = _object_matches(t, s, 0, 0) + _object_matches(t, s, 1, 1) + (t[:, LAYOUT] == s[:, LAYOUT])
    swapped = _object_matches(t, s, 0, 1) + _object_matches(t, s, 1, 0) + (_INVERSE_LAYOUT[t[:, LAYOUT]] == s[:, LAYOUT])
    matched = np.maximum(direct, swapped) + (t[:, BG] == s[:, BG])
    return matched / (3.0 * np.maximum(t[:, N_OBJ], s[:, N_OBJ]) + 2.0)


def fidelity(target: Scene, image: Scene) -> float:
    return float(fidelity_codes(target.codes(), image.codes())[0])


def quality_values(blur, noise, jpeg_quality) -> np.ndarray:
    """Vectorised quality: product of (1 - defect) over blur, noise and JPEG artefacts, each defect in [0, 1]."""
    d_blur = np.clip(np.asarray(blur, dtype=np.float64) / BLUR_MAX, 0, 1)
    d_noise = np.clip(np.asarray(noise, dtype=np.float64) / NOISE_MAX, 0, 1)
    d_jpeg = np.clip((JPEG_CLEAN - np.asarray(jpeg_quality, dtype=np.float64)) / (JPEG_CLEAN - JPEG_WORST), 0, 1)
    return (1 - d_blur) * (1 - d_noise) * (1 - d_jpeg)


def quality(params: QualityParams) -> float:
    return float(quality_values(params.blur, params.noise, params.jpeg_quality))


def true_reward(fidelity_value, quality_value):
    """The majority's taste: W_FIDELITY * fidelity + W_QUALITY * quality (in [0, 1]; arrays or floats)."""
    return W_FIDELITY * fidelity_value + W_QUALITY * quality_value


# ---------------------------------------------------------------- rendering
_SUPERSAMPLE = 4
_RADIUS = {"small": 0.11, "large": 0.2}  # fraction of the image side
_CENTRES_ONE = {"left": (0.28, 0.5), "right": (0.72, 0.5), "top": (0.5, 0.28), "bottom": (0.5, 0.72), "center": (0.5, 0.5)}
_CENTRES_TWO = {
    "left of": ((0.28, 0.5), (0.72, 0.5)), "right of": ((0.72, 0.5), (0.28, 0.5)),
    "above": ((0.5, 0.28), (0.5, 0.72)), "below": ((0.5, 0.72), (0.5, 0.28)),
}


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = 0.85 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r), (cx - 0.75 * r, cy)]
    points, radii = (3, [r]) if shape == "triangle" else (10, [r, 0.45 * r])  # star: alternate outer/inner
    return [
        (cx + radii[k % len(radii)] * math.sin(2 * math.pi * k / points), cy - radii[k % len(radii)] * math.cos(2 * math.pi * k / points))
        for k in range(points)
    ]


def _centres(scene: Scene) -> list[tuple[float, float]]:
    if len(scene.objects) == 1:
        return [_CENTRES_ONE[scene.layout]]
    return list(_CENTRES_TWO[scene.layout])


def render(scene: Scene, params: QualityParams = QualityParams(), size: int = 64, seed: int = 0) -> Image.Image:
    """Draw ``scene`` (antialiased by supersampling) and apply ``params``; ``seed`` jitters the
    object positions a little and draws the noise, so two renders of one scene differ slightly."""
    rng = np.random.default_rng(seed)
    big = size * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for obj, (cx, cy) in zip(scene.objects, _centres(scene)):
        jx, jy = rng.uniform(-0.03, 0.03, size=2)
        x, y, r = (cx + jx) * big, (cy + jy) * big, _RADIUS[obj.size] * big
        if obj.shape == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=COLOURS[obj.colour])
        else:
            draw.polygon(_polygon(obj.shape, x, y, r), fill=COLOURS[obj.colour])
    image = image.resize((size, size), Image.Resampling.BOX)
    return _degrade(image, params, rng)


def _degrade(image: Image.Image, params: QualityParams, rng: np.random.Generator) -> Image.Image:
    if params.blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(params.blur * image.width / 64))
    if params.noise > 0:
        pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, params.noise * 255, size=(image.height, image.width, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if params.jpeg_quality < 100:
        image = Image.open(io.BytesIO(encode(image, "jpeg", params.jpeg_quality))).convert("RGB")
    return image


def encode(image: Image.Image, fmt: str, jpeg_quality: int = 92) -> bytes:
    """PNG or JPEG bytes (deterministic: no timestamps or random chunks)."""
    _check(fmt, ("png", "jpeg"), "image format")
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, format="PNG", compress_level=6)
    else:
        image.save(buffer, format="JPEG", quality=int(jpeg_quality))
    return buffer.getvalue()


def render_bytes(scene: Scene, params: QualityParams = QualityParams(), size: int = 64, fmt: str = "png", seed: int = 0) -> bytes:
    return encode(render(scene, params, size, seed), fmt)
