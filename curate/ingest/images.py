"""Image checks: format sniffed from magic bytes, header parsed, truncation caught, paths kept in the root."""
from __future__ import annotations

import os
import re
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


class _BadHeader(ValueError):
    pass


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise _BadHeader("PNG without an IHDR chunk")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Walk the marker segments up to the first start-of-frame, which holds the size."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise _BadHeader(f"JPEG marker expected at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                break
            return int.from_bytes(data[pos + 7:pos + 9], "big"), int.from_bytes(data[pos + 5:pos + 7], "big")
        if length < 2:
            raise _BadHeader(f"JPEG segment of length {length} at byte {pos}")
        pos += 2 + length
    raise _BadHeader("JPEG without a start-of-frame segment")


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    raise _BadHeader("WebP without a VP8/VP8L/VP8X chunk")


_SIZE = {
    "png": _png_size,
    "jpeg": _jpeg_size,
    "gif": lambda d: (int.from_bytes(d[6:8], "little"), int.from_bytes(d[8:10], "little")),
    "bmp": lambda d: (int.from_bytes(d[18:22], "little", signed=True), abs(int.from_bytes(d[22:26], "little", signed=True))),
    "webp": _webp_size,
}


# Pillow's own decompression-bomb limit: anything larger would stop `report --gallery` and training later.
MAX_PIXELS = 89_478_485


def inspect_image(data: bytes, full_decode: bool = False) -> tuple[str, int, int]:
    """(format, width, height) of encoded bytes, or Rejected(undecodable/truncated).

    By default the header is parsed here (microseconds, no decoder) and the end of the stream is
    checked for its end marker; ``full_decode`` also decodes every pixel with Pillow, which catches
    corruption inside the stream at a much higher cost.
    """
    if not data:
        raise Rejected(Reason.UNDECODABLE_IMAGE, "image is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise Rejected(Reason.UNDECODABLE_IMAGE,
                       f"bytes start with {data[:8]!r}: not a PNG, JPEG, WebP, GIF or BMP signature")
    try:
        width, height = _SIZE[fmt](data)
    except _BadHeader as exc:
        code = Reason.TRUNCATED_IMAGE if len(data) < 64 else Reason.UNDECODABLE_IMAGE
        raise Rejected(code, f"{fmt} header is invalid: {exc}") from None
    if width <= 0 or height <= 0:
        raise Rejected(Reason.UNDECODABLE_IMAGE, f"{fmt} header gives a size of {width}x{height}")
    if width * height > MAX_PIXELS:
        raise Rejected(Reason.IMAGE_TOO_LARGE, f"{fmt} header claims {width}x{height} pixels, more than the "
                                               f"{MAX_PIXELS:,} an image may have (a decompression bomb?)")
    if _looks_truncated(data, fmt):
        raise Rejected(Reason.TRUNCATED_IMAGE, f"{fmt} image of {len(data)} bytes ends before its end marker")
    if full_decode:
        _decode(data, fmt)
    return fmt, width, height


def _decode(data: bytes, fmt: str) -> None:
    from curate.images import decode_image

    try:
        decode_image(data)
    except Exception as exc:  # PIL raises many types for bad data; all mean the same here
        code = Reason.TRUNCATED_IMAGE if "truncat" in str(exc).lower() else Reason.UNDECODABLE_IMAGE
        raise Rejected(code, f"{fmt} image could not be decoded: {exc}") from None


def resolve_in_root(path: str, root: Path) -> Path:
    """``path`` (relative to ``root``) as a real file inside ``root``; Rejected otherwise."""
    if "\x00" in path:
        raise Rejected(Reason.BAD_TYPE, f"image path {path!r} holds a NUL byte: no file has such a name")
    root_real = os.path.realpath(root)
    candidate = os.path.realpath(os.path.join(root_real, path))
    if os.path.isabs(path) or os.path.commonpath([root_real, candidate]) != root_real:
        raise Rejected(Reason.PATH_OUTSIDE_ROOT, f"image path {path!r} is outside the image root {root}; "
                                                 f"paths must be relative and stay inside --image-root")
    if not os.path.isfile(candidate):
        raise Rejected(Reason.MISSING_FILE, f"image file {path!r} not found under {root}")
    return Path(candidate)


def _read_file(path: Path, ref: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise Rejected(Reason.MISSING_FILE, f"image file {ref!r} cannot be read ({exc.strerror})") from None


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def load_image_ref(ref, root: Path | None, allow_network: bool, timeout: float = 20.0) -> bytes:
    """Bytes of an image given as bytes, an HF Image struct {bytes, path}, a path under ``root`` or a URL."""
    if isinstance(ref, dict):
        if ref.get("bytes"):
            ref = ref["bytes"] if isinstance(ref["bytes"], (bytes, bytearray, memoryview)) else {"bytes": ref["bytes"]}
        else:
            ref = ref.get("path")
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return bytes(ref)
    if not isinstance(ref, str) or not ref.strip():
        raise Rejected(Reason.BAD_TYPE, f"image reference {ref!r} is neither bytes, a path nor a URL")
    match = _SCHEME.match(ref)
    scheme = match.group(1) if match else None
    if scheme is not None and scheme.lower() not in ("http", "https"):
        raise Rejected(Reason.UNSUPPORTED_URL, f"image reference {ref!r} is a {scheme}:// URL; only http(s) URLs are "
                                               f"fetched (with --allow-network): give a path under --image-root instead")
    if scheme is not None:
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
    return _read_file(resolve_in_root(ref, root), ref)
