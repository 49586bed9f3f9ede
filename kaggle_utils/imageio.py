"""Decode competition files from bytes: JPEGs at a target size (reduced DCT decode), GIF masks.

Decoding a 1918x1280 JPEG in full and then shrinking it wastes most of the work when training at
1024 or below: libjpeg can scale by 1/2, 1/4 or 1/8 inside the inverse DCT (OpenCV's
``IMREAD_REDUCED_COLOR_*``), which is several times faster. We take the largest such factor that
keeps the decoded image at least as large as the target in both dimensions (so we never upsample a
reduced image), then ``cv2.resize`` (INTER_AREA) to exactly the requested (H, W).
"""

from __future__ import annotations

import io
import math
from typing import Any

import cv2
import numpy as np
from PIL import Image

# libjpeg scale factor -> OpenCV flag (reduced decodes always return 3-channel BGR). EXIF
# orientation is ignored: masks and RLE refer to the pixels as stored, and the header size we
# compare against is the stored one too.
_NO_EXIF = cv2.IMREAD_IGNORE_ORIENTATION
_REDUCED_FLAGS = {
    8: cv2.IMREAD_REDUCED_COLOR_8 | _NO_EXIF,
    4: cv2.IMREAD_REDUCED_COLOR_4 | _NO_EXIF,
    2: cv2.IMREAD_REDUCED_COLOR_2 | _NO_EXIF,
    1: cv2.IMREAD_COLOR | _NO_EXIF,
}


def _label(name: str | None) -> str:
    return name if name else "<bytes>"


_REPLACE = "replace it with the competition's original (download or extract it again)"


class ImageDecodeError(ValueError):
    """An image file that cannot be decoded; the message's first line names the file, its size,
    the fault and the fix.

    A DataLoader worker's error comes back to the main process as ``type(exc)(text)`` where the
    text starts "Caught ... in DataLoader worker" and buries the message under the worker's
    traceback; this class lifts its own message back to the first line. ``detail`` is the fault
    without the file's name (callers that add their own context reuse it).
    """

    def __init__(self, message: str, detail: str | None = None):
        self.detail = detail
        if message.startswith("Caught ") and "\nOriginal Traceback" in message:
            last = message.rstrip().rsplit("\n", 1)[-1]
            kind, _, own = last.partition(": ")
            own = own if kind.endswith(ImageDecodeError.__name__) else ""
            if own:
                message = f"{own} (raised in a DataLoader worker; its traceback:)\n{message}"
        super().__init__(message)


def _decode_error(name: str | None, data: bytes, fault: str) -> ImageDecodeError:
    if not data:
        detail = f"the file is empty (0 bytes); {_REPLACE}"
    else:
        detail = f"{len(data)} bytes, {fault}; {_REPLACE}"
    return ImageDecodeError(f"cannot decode JPEG {_label(name)}: {detail}", detail)


def jpeg_size(data: bytes, name: str | None = None) -> tuple[int, int]:
    """(H, W) of a JPEG from its header only (PIL parses lazily: ~30 µs, no pixel decode)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Exception as exc:  # PIL raises several types for garbage input
        fault = f"no readable image header ({type(exc).__name__}: {exc})"
        raise _decode_error(name, data, fault) from None
    return h, w


def reduction_factor(src_hw: tuple[int, int], size: tuple[int, int] | None) -> int:
    """Largest libjpeg scale 1/r (r in 8, 4, 2, 1) whose output still covers ``size`` in both dims.

    libjpeg rounds scaled dimensions up (ceil(W / r)), so a 1918x1280 image at r=8 is 240x160.
    """
    if size is None:
        return 1
    h, w = src_hw
    th, tw = size
    for r in (8, 4, 2):
        if -(-h // r) >= th and -(-w // r) >= tw:
            return r
    return 1


def _check_size(size: tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if len(size) != 2 or int(size[0]) < 1 or int(size[1]) < 1:
        raise ValueError(f"size must be (H, W) with positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def decode_jpeg(
    data: bytes, size: tuple[int, int] | None = None, name: str | None = None
) -> np.ndarray:
    """Decode JPEG bytes to RGB uint8 (H, W, 3), exactly ``size`` (H, W) when given.

    Uses reduced DCT decoding whenever the target allows it without upsampling, then INTER_AREA.
    ``name`` only labels errors.
    """
    return decode_jpeg_sizes(data, [size], name)[0]


def decode_jpeg_sizes(
    data: bytes, sizes: list[tuple[int, int] | None], name: str | None = None
) -> list[np.ndarray]:
    """``decode_jpeg`` at each of ``sizes`` (None: as stored), decoding once per libjpeg scale:
    ensemble members at several sizes and a 1/4-size guide share the reduced decodes."""
    checked = [_check_size(s) for s in sizes]
    buf = np.frombuffer(data, dtype=np.uint8)
    src = jpeg_size(data, name) if any(s is not None for s in checked) else None
    decoded: dict[int, np.ndarray] = {}
    out = []
    for size in checked:
        r = reduction_factor(src, size) if size is not None else 1  # type: ignore[arg-type]
        if r not in decoded:
            bgr = cv2.imdecode(buf, _REDUCED_FLAGS[r]) if len(buf) else None
            if bgr is None:
                raise _decode_error(name, data, "truncated or corrupt JPEG data")
            decoded[r] = bgr
        bgr = decoded[r]
        if size is not None and bgr.shape[:2] != size:
            # INTER_AREA is the right filter for shrinking; for a (rare) enlargement it falls
            # back to bilinear-like behaviour, which is what we want too.
            bgr = cv2.resize(bgr, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return out


def decode_jpeg_full(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """The baseline: full-size decode then resize. Kept for benchmarks and tests."""
    size = _check_size(size)
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _REDUCED_FLAGS[1])
    if bgr is None:
        raise ValueError(f"cannot decode JPEG ({len(data)} bytes)")
    if size is not None and bgr.shape[:2] != size:
        bgr = cv2.resize(bgr, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_mask_gif(data: bytes, name: str | None = None) -> np.ndarray:
    """Decode a GIF (or PNG) mask to uint8 {0, 1}: whatever is drawn (nonzero) is the object.

    Carvana's GIFs are palette images with indices {0, 1} (black, white). We map indices through
    the palette, so masks saved as 0/255 or with a reordered palette decode the same way.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.seek(0)
            if im.mode == "P":
                idx = np.asarray(im)
                lut = np.arange(256) != 0  # indices without a palette entry: nonzero -> object
                pal = im.getpalette() or []
                colours = np.asarray(pal[: (len(pal) // 3) * 3], dtype=np.uint8).reshape(-1, 3)
                lut[: len(colours)] = colours.any(axis=1)
                return lut.astype(np.uint8)[idx]
            arr = np.asarray(im.convert("L"))
    except Exception as exc:
        size = f"{len(data)} bytes" if data else "the file is empty (0 bytes)"
        detail = f"{size}, not a readable GIF ({type(exc).__name__}: {exc}); {_REPLACE}"
        raise ImageDecodeError(f"cannot decode mask {_label(name)}: {detail}", detail) from None
    return (arr != 0).astype(np.uint8)


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """RGB uint8 -> JPEG bytes (used by the synthetic generator)."""
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def encode_mask_gif(mask: np.ndarray) -> bytes:
    """uint8 {0,1} mask -> palette GIF with indices {0, 1} (black, white), as Carvana ships them."""
    im = Image.fromarray((np.asarray(mask) != 0).astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 255, 255, 255])
    out = io.BytesIO()
    im.save(out, format="GIF", optimize=False)
    return out.getvalue()


# ---------------------------------------------------------------- the photo as guide (refine)

GUIDE_SCALES = (1, 2, 4, 8)  # libjpeg decodes at these fractions without a resize


def guide_shape(full_shape: tuple[int, int], scale: int) -> tuple[int, int]:
    """(H, W) of the guide for a photo of ``full_shape``: what libjpeg's 1/scale decode gives."""
    if scale not in GUIDE_SCALES:
        raise ValueError(f"guide scale {scale} must be one of {GUIDE_SCALES}")
    return math.ceil(full_shape[0] / scale), math.ceil(full_shape[1] / scale)


def gray_guide(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> the guide as it is stored and passed around: gray uint8 (H, W)."""
    return rgb.mean(-1).round().astype(np.uint8)


def load_guide(
    data: Any, image_id: str, full_shape: tuple[int, int], scale: int, **kw: Any
) -> np.ndarray:
    """The gray guide of one photo of a dataset (``layout``): its 1/scale reduced decode."""
    return gray_guide(data.load_image(image_id, size=guide_shape(full_shape, scale), **kw))
