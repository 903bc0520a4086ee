"""Image checks: format sniffed from magic bytes, header parsed, truncation caught, paths kept in the root."""
from __future__ import annotations

import io
import os
from pathlib import Path

from curate.ingest.reasons import Reason, Rejected

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)


def sniff_format(data: bytes) -> str | None:
    """The image format from its first bytes (Pick-a-Pic's jpg_* columns often hold PNGs)."""
    for magic, fmt in _SIGNATURES:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _looks_truncated(data: bytes, fmt: str) -> bool:
    """Cheap structural end checks, so a cut file is caught without decoding every pixel."""
    if fmt == "png":
        return not data.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82")
    if fmt == "jpeg":
        return not data.rstrip(b"\x00").endswith(b"\xff\xd9")
    if fmt == "gif":
        return not data.rstrip(b"\x00").endswith(b"\x3b")
    if fmt == "webp":
        return int.from_bytes(data[4:8], "little") + 8 > len(data)
    if fmt == "bmp":
        return int.from_bytes(data[2:6], "little") > len(data)
    return False


def inspect_image(data: bytes, full_decode: bool = False) -> tuple[str, int, int]:
    """(format, width, height) of encoded bytes, or Rejected(undecodable/truncated).

    By default the header is parsed and the end of the stream checked; ``full_decode`` also decodes
    every pixel (slower, catches corruption inside the stream).
    """
    from PIL import Image

    if not data:
        raise Rejected(Reason.UNDECODABLE_IMAGE, "image is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise Rejected(Reason.UNDECODABLE_IMAGE,
                       f"bytes start with {data[:8]!r}: not a PNG, JPEG, WebP, GIF or BMP signature")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if full_decode:
                img.load()
    except Exception as exc:  # PIL raises many types for bad data; all mean the same here
        code = Reason.TRUNCATED_IMAGE if "truncat" in str(exc).lower() else Reason.UNDECODABLE_IMAGE
        raise Rejected(code, f"{fmt} image could not be decoded: {exc}") from None
    if _looks_truncated(data, fmt):
        raise Rejected(Reason.TRUNCATED_IMAGE, f"{fmt} image of {len(data)} bytes ends before its end marker")
    return fmt, width, height


def resolve_in_root(path: str, root: Path) -> Path:
    """``path`` (relative to ``root``) as a real file inside ``root``; Rejected otherwise."""
    root_real = os.path.realpath(root)
    candidate = os.path.realpath(os.path.join(root_real, path))
    if os.path.isabs(path) or os.path.commonpath([root_real, candidate]) != root_real:
        raise Rejected(Reason.PATH_OUTSIDE_ROOT, f"image path {path!r} is outside the image root {root}; "
                                                 f"paths must be relative and stay inside --image-root")
    if not os.path.isfile(candidate):
        raise Rejected(Reason.MISSING_FILE, f"image file {path!r} not found under {root}")
    return Path(candidate)


def load_image_ref(ref, root: Path | None, allow_network: bool, timeout: float = 20.0) -> bytes:
    """Bytes of an image given as bytes, an HF Image struct {bytes, path}, a path under ``root`` or a URL."""
    if isinstance(ref, dict):
        if ref.get("bytes"):
            return ref["bytes"]
        ref = ref.get("path")
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return bytes(ref)
    if not isinstance(ref, str) or not ref.strip():
        raise Rejected(Reason.BAD_TYPE, f"image reference {ref!r} is neither bytes, a path nor a URL")
    if ref.startswith(("http://", "https://")):
        if not allow_network:
            raise Rejected(Reason.URL_NOT_ALLOWED, f"image is a URL ({ref}); pass --allow-network to download it")
        import urllib.request

        try:
            with urllib.request.urlopen(ref, timeout=timeout) as response:  # noqa: S310 (http(s) checked above)
                return response.read()
        except Exception as exc:
            raise Rejected(Reason.FETCH_FAILED, f"could not download {ref}: {exc}") from None
    if root is None:
        raise Rejected(Reason.MISSING_FILE, f"image path {ref!r} given but no --image-root to resolve it in")
    return resolve_in_root(ref, root).read_bytes()
