"""Carvana run-length encoding: row-major (C order), 1-indexed ``start length`` pairs.

The competition's ``train_masks.csv`` and submissions number pixels along rows first
(pixel ``row * 1918 + col + 1``), i.e. ``mask.flatten()`` in C order — not the column-major
order of the generic Kaggle wording (checked against the real ``train_masks.csv``).

``rle_encode`` is the hot step of a 100,064-image submission. Its core (``rle_kernel``, compiled
by numba) reads the mask once and writes the text as it goes: 7,000-8,000 masks/s per core on a
quiet host here, 21-22x the usual Kaggle idiom (pad, compare, ``np.where``, join;
``bench/bench_rle.py``), with an identical string. Where numba cannot
load, a plain numpy path gives the same string more slowly.
"""

from __future__ import annotations

import math
import sys
import threading
import warnings
from collections.abc import Iterable

import numpy as np

from kaggle_utils.constants import MASK_SHAPE  # (H, W); importable as rle.MASK_SHAPE

__all__ = ["MASK_SHAPE", "rle_decode", "rle_encode", "rle_encode_many", "rle_runs", "rle_to_string"]

try:  # the compiled one-pass encoder; it reads 64-bit words as little-endian bytes
    from kaggle_utils.rle_kernel import encode_into as _encode_into

    if sys.byteorder != "little":
        _encode_into = None
except ImportError as err:  # e.g. a numpy newer than the installed numba supports
    warnings.warn(
        f"numba unavailable ({err}); RLE encoding uses the slower numpy path", stacklevel=2
    )
    _encode_into = None

_U64 = np.uint64
_SH8 = _U64(8)
_scratch = threading.local()
_ZERO, _NONE = np.zeros(1, np.int64), np.zeros(0, np.int64)


def _digit_tables() -> tuple[np.ndarray, np.ndarray]:
    """8-byte text slots (little-endian uint64) for a number v < 10**7 = hi * 10**4 + lo:

    ``_HI_SLOT[hi]``: up to 3 digits, NUL-padded on the left (bytes 0-2);
    ``_LO_SLOT[lo + 10**4 * (hi > 0)]``: 4 digits (NUL- or zero-padded) in bytes 3-6, a space in 7.
    OR-ing the two and deleting the NULs gives ``str(v) + " "``.
    """
    hi = b"".join((b"%d" % i if i else b"").rjust(3, b"\0") + b"\0" * 5 for i in range(1000))
    lo_nul = [(b"%d" % i if i else b"").rjust(4, b"\0") for i in range(10000)]
    lo_zero = [b"%04d" % i for i in range(10000)]
    lo = b"".join(b"\0" * 3 + t + b" " for t in lo_nul + lo_zero)
    return np.frombuffer(hi, dtype="<u8").copy(), np.frombuffer(lo, dtype="<u8").copy()


_HI_SLOT, _LO_SLOT = _digit_tables()


def rle_to_string(values: np.ndarray, checked: bool = False) -> str:
    """Space-join non-negative integers, like ``" ".join(map(str, values))`` but vectorised.

    About 8x faster for 3,000 numbers: one 8-byte text slot per number from two table lookups,
    then the NUL padding is deleted by ``bytes.translate``. ``checked``: caller knows 0 <= v < 10**7.
    """
    v = np.asarray(values, dtype=np.int64).reshape(-1)
    if v.size == 0:
        return ""
    if not checked and (v.min() < 0 or v.max() >= 10**7):
        return " ".join(map(str, v.tolist()))
    hi = v // 10000
    lo = v - hi * 10000
    slots = _HI_SLOT[hi] | _LO_SLOT[lo + (hi > 0) * 10000]
    return slots.tobytes().translate(None, b"\0")[:-1].decode("ascii")


def _as_numpy(mask) -> np.ndarray:
    if hasattr(mask, "detach") and hasattr(mask, "cpu"):  # a torch tensor, without importing torch
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask)


def _exact_transitions(b: np.ndarray) -> np.ndarray:
    """Positions k (1..n-1) where b[k-1] != b[k], by a plain full comparison (always correct)."""
    return np.flatnonzero(b[1:] != b[:-1]) + 1


def _encode_numpy(b: np.ndarray) -> str:
    """The plain vectorised encoder: the fallback where numba cannot load, and the reference."""
    b = (b != 0).view(np.uint8)
    t = _exact_transitions(b)
    if b[0] or b[-1]:  # runs touching the first / last pixel (the idiom's zero padding)
        t = np.concatenate((_ZERO if b[0] else _NONE, t, [b.size] if b[-1] else _NONE))
    t[1::2] -= t[::2]
    t[::2] += 1
    return rle_to_string(t, checked=b.size < 10**7)


def _text_buffer(min_size: int) -> np.ndarray:
    """A per-thread reusable output buffer (a fresh one per mask would cost page faults)."""
    buf = getattr(_scratch, "text", None)
    if buf is None or buf.size < min_size:
        buf = np.empty(max(min_size, 1 << 16), dtype=np.uint8)
        _scratch.text = buf
    return buf


def rle_encode(mask) -> str:
    """Encode a binary mask as Kaggle Carvana RLE: row-major, 1-indexed ``start length`` pairs.

    Accepts numpy arrays (bool, uint8/int8 {0,1} or {0,255}, or any dtype: nonzero = car) and
    torch tensors (moved to CPU). An empty mask gives ``""``. Identical to the Kaggle idiom, ~20x
    faster (one compiled pass over the mask, see ``rle_kernel``; bench/bench_rle.py).
    """
    a = mask if type(mask) is np.ndarray else _as_numpy(mask)  # the common case, checked fast
    if a.dtype.char not in "?Bb":  # bool, uint8, int8 are read as bytes; others compared to 0
        a = a != 0
    b = (a if a.flags.c_contiguous else np.ascontiguousarray(a)).reshape(-1).view(np.uint8)
    if b.size == 0:
        return ""
    if _encode_into is None:
        return _encode_numpy(b)
    size = 1 << 16
    while True:
        out = _text_buffer(size)
        length = _encode_into(b, out)
        if length >= 0:
            return str(out[: max(length - 1, 0)], "ascii")  # one copy, straight from the buffer
        size = out.size * 4


def rle_encode_many(masks: Iterable) -> list[str]:
    """Encode an iterable of masks (e.g. a batch tensor's first axis)."""
    return [rle_encode(m) for m in masks]


def _fault(image_id: str | None, msg: str) -> ValueError:
    return ValueError(f"bad RLE for {image_id or '<unnamed image>'}: {msg}")


def _is_missing(rle) -> bool:
    return rle is None or (isinstance(rle, float) and math.isnan(rle))


def _slow_tokens(text: str, image_id: str | None) -> np.ndarray:
    """Token-by-token parse; used only to name the fault (or for unusual whitespace)."""
    tokens = text.split()
    if len(tokens) % 2:
        raise _fault(image_id, f"odd number of tokens ({len(tokens)}); expected start/length pairs")
    for i, tok in enumerate(tokens):
        if not (tok.isascii() and tok.isdigit()):
            raise _fault(image_id, f"token {i + 1} {tok[:20]!r} is not a non-negative integer")
        if len(tok) > 15:
            raise _fault(image_id, f"token {i + 1} {tok[:20]!r}... is far too large")
    return np.array([int(t) for t in tokens], dtype=np.int64)


def _fast_tokens(raw: np.ndarray) -> np.ndarray | None:
    """Integers of single-space separated digit text, vectorised; None if the text is unusual."""
    d = raw - np.uint8(48)
    spaces = np.flatnonzero(raw == 32)
    if np.count_nonzero(d < 10) + spaces.size != raw.size:
        return None
    starts = np.empty(spaces.size + 1, dtype=np.int64)
    starts[0] = 0
    starts[1:] = spaces + 1
    ends = np.empty_like(starts)
    ends[:-1] = spaces
    ends[-1] = raw.size
    width = ends - starts
    if width.min() < 1 or width.max() > 15:
        return None
    wmax = int(width.max())
    if wmax <= 8:
        return _eight_digit_values(raw, ends, width)
    idx = ends[:, None] - np.arange(wmax, 0, -1)  # right-aligned digit positions per token
    valid = idx >= starts[:, None]
    digits = np.where(valid, d[np.maximum(idx, 0)], 0).astype(np.int64)
    return digits @ (10 ** np.arange(wmax - 1, -1, -1, dtype=np.int64))


_ASCII0 = _U64(0x3030303030303030)
_LANES = _U64(0x000000FF000000FF)
_MUL1 = _U64(100 + (1000000 << 32))
_MUL2 = _U64(1 + (10000 << 32))
_SH16, _SH32 = _U64(16), _U64(32)


def _eight_digit_values(raw: np.ndarray, ends: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Tokens of <= 8 digits: each right-aligned into 8 bytes, left-padded with '0', then
    converted with three multiply-shift steps per 64-bit word (Lemire's eight-digit SWAR)."""
    padded = np.empty(raw.size + 8, dtype=np.uint8)
    padded[:8] = 48
    padded[8:] = raw
    windows = np.lib.stride_tricks.sliding_window_view(padded, 8)[ends]  # bytes end-8 .. end-1
    w = windows.view("<u8").reshape(-1)
    keep = ~_U64(0) << ((8 - width).astype(np.uint64) << np.uint64(3))  # the token's own bytes
    v = ((w & keep) | (_ASCII0 & ~keep)) - _ASCII0
    v = v * _U64(10) + (v >> _SH8)
    v = ((v & _LANES) * _MUL1 + ((v >> _SH16) & _LANES) * _MUL2) >> _SH32
    return v.astype(np.int64)


def rle_runs(
    rle, n_pixels: int = MASK_SHAPE[0] * MASK_SHAPE[1], image_id: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validated runs of an RLE string: (0-based starts, lengths), int64. Raises ValueError.

    Checks, vectorised: even token count, integer tokens, start >= 1, length >= 1, runs sorted
    and not overlapping, last run inside the ``n_pixels`` image. Empty string / NaN -> no runs.
    """
    if _is_missing(rle):
        return _NONE, _NONE
    if isinstance(rle, (bytes, bytearray, memoryview)):  # straight from a file: no str round trip
        raw = bytes(rle).strip()
        vals = _fast_tokens(np.frombuffer(raw, dtype=np.uint8)) if raw else _NONE
        if vals is None:
            vals = _slow_tokens(raw.decode("utf-8", "replace"), image_id)
    else:
        text = str(rle).strip()
        vals = _fast_tokens(np.frombuffer(text.encode(), np.uint8)) if text.isascii() else None
        if vals is None:
            vals = _slow_tokens(text, image_id)
    if vals.size == 0:
        return _NONE, _NONE
    if vals.size % 2:
        raise _fault(image_id, f"odd number of tokens ({vals.size}); expected start/length pairs")
    starts, lengths = vals[0::2], vals[1::2]
    _check_runs(starts, lengths, n_pixels, image_id)
    return starts - 1, lengths


def _check_runs(starts: np.ndarray, lengths: np.ndarray, n_pixels: int, image_id) -> None:
    bad = np.flatnonzero(starts < 1)
    if bad.size:
        raise _fault(image_id, f"run {bad[0] + 1} has start {starts[bad[0]]} < 1")
    bad = np.flatnonzero(lengths < 1)
    if bad.size:
        raise _fault(image_id, f"run {bad[0] + 1} has length {lengths[bad[0]]} < 1")
    ends = starts + lengths  # 1-based exclusive end
    bad = np.flatnonzero(starts[1:] < ends[:-1])
    if bad.size:
        i = bad[0]
        what = "unsorted" if starts[i + 1] < starts[i] else "overlapping"
        raise _fault(
            image_id,
            f"runs {i + 1} and {i + 2} are {what} (start {starts[i]} length {lengths[i]}, "
            f"then start {starts[i + 1]})",
        )
    if ends.size and ends[-1] - 1 > n_pixels:
        raise _fault(
            image_id,
            f"run {ends.size} (start {starts[-1]} length {lengths[-1]}) ends at pixel "
            f"{ends[-1] - 1}, past the image end ({n_pixels} pixels)",
        )


def rle_decode(
    rle: str | float | None, shape: tuple[int, int] = MASK_SHAPE, image_id: str | None = None
) -> np.ndarray:
    """Decode a row-major RLE string to a uint8 {0,1} mask of ``shape``.

    Strict: malformed input raises ValueError naming ``image_id`` and the fault. Empty / NaN
    (pandas' reading of an empty cell) gives an all-zero mask.
    """
    n = int(np.prod(shape))
    starts, lengths = rle_runs(rle, n, image_id)
    out = np.zeros(n, dtype=np.uint8)
    for s, ln in zip(starts.tolist(), lengths.tolist(), strict=True):
        out[s : s + ln] = 1
    return out.reshape(shape)
