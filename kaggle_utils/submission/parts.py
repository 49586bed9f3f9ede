"""Part files of a chunked submission: one chunk of CSV rows as a raw deflate stream ending on a
byte boundary (pigz's trick) behind a small header (magic, CRC-32, length, rows), so joining parts is
a byte copy with CRCs combined arithmetically. Writing, checking and naming parts, the process-pool
worker that encodes a chunk, and a row's RLE from a mask."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

from kaggle_utils.atomic import atomic_write
from kaggle_utils.rle import rle_encode, rle_runs
from kaggle_utils.submission.ids import SubmissionError

_PART_MAGIC = b"KUSUBPT1"
_PART_HEAD = struct.Struct("<8sIQI")  # magic, crc32 of the text, text length, rows
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, mtime 0, OS unknown


_CRC_POLY = 0xEDB88320


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial (zlib's multmodp, reflected bit order)."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1


def _x2n_table() -> list[int]:
    table, p = [], 1 << 30  # x^1
    for _ in range(32):
        table.append(p)
        p = _multmodp(p, p)
    return table


_X2N = _x2n_table()


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A+B from crc(A), crc(B) and len(B), as zlib's crc32_combine (not in Python)."""
    p, k = 1 << 31, 3  # x^0; x^(8 * len2) = x^(2^3 * len2)
    while len2:
        if len2 & 1:
            p = _multmodp(_X2N[k & 31], p)
        len2 >>= 1
        k += 1
    return _multmodp(p, crc1) ^ crc2


def _deflate_piece(data: bytes, level: int) -> bytes:
    """Raw deflate of data ending in a sync flush: byte-aligned, not final, so pieces concatenate."""
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)


_FINAL_BLOCK = zlib.compressobj(1, zlib.DEFLATED, -15).flush()  # an empty final block


def _write_part(path: str, text: bytes, rows: int, level: int) -> int:
    """Compress one chunk of CSV rows and write it atomically (runs in a worker)."""
    head = _PART_HEAD.pack(_PART_MAGIC, zlib.crc32(text), len(text), rows)
    body = _deflate_piece(text, level)

    def write(f) -> None:
        f.write(head)
        f.write(body)

    atomic_write(path, write)
    return rows


def _part_fault(path: Path, ids: list[str]) -> str | None:
    """Why a part file cannot go into the submission (None: it is sound).

    Inflates the part and checks what its header promises (CRC-32, length, rows) and that its
    rows are exactly ``ids`` in order: a torn or bit-flipped part is found here, naming the file,
    instead of as a CRC error in the joined ``submission.csv.gz``.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return f"unreadable ({exc})"
    if len(raw) < _PART_HEAD.size or raw[:8] != _PART_MAGIC:
        return f"not a submission part file ({len(raw)} bytes, no part header)"
    _, crc, length, rows = _PART_HEAD.unpack(raw[: _PART_HEAD.size])
    if rows != len(ids):
        return f"holds {rows} rows, its chunk has {len(ids)}"
    try:
        text = zlib.decompressobj(-15).decompress(raw[_PART_HEAD.size :])
    except zlib.error as exc:
        return f"corrupt deflate data ({exc})"
    if len(text) != length or zlib.crc32(text) != crc:
        return f"truncated or corrupt (CRC-32/length check failed: {len(text)} of {length} bytes)"
    got = [line.partition(b",")[0].decode("utf-8", "replace") for line in text.splitlines()]
    if got != ids:
        wrong = next((g for g, i in zip(got, ids, strict=False) if g != i), "(row count)")
        return f"its rows are not its chunk's ids (first wrong: {wrong})"
    return None


def _chunk_number(path: Path) -> int | None:
    """``part-000012.bin`` -> 12; None for a name the writer never makes."""
    digits = path.stem.partition("-")[2]
    return int(digits) if digits.isdigit() else None


_worker_mask_fn: Callable | None = None


def _init_worker(mask_fn: Callable) -> None:
    global _worker_mask_fn
    _worker_mask_fn = mask_fn


def _encode_chunk(path: str, ids: list[str], level: int, shape: tuple[int, int]) -> int:
    """Process-pool job: build each mask with the worker's mask_fn, encode, compress, write."""
    lines = []
    for image_id in ids:
        lines.append(f"{image_id},{_to_rle(image_id, _worker_mask_fn(image_id), shape)}\n")
    return _write_part(path, "".join(lines).encode("utf-8"), len(ids), level)


def _to_rle(image_id: str, mask, shape: tuple[int, int]) -> str:
    """A row's RLE from a mask (array/tensor), an RLE string (checked), or None (empty)."""
    if mask is None:
        return ""
    if isinstance(mask, str):
        rle_runs(mask, shape[0] * shape[1], image_id)  # raises naming the id
        return mask.strip()
    got = tuple(getattr(mask, "shape", ()))
    if got != tuple(shape):
        raise SubmissionError(f"mask for {image_id} has shape {got}, expected {tuple(shape)}")
    return rle_encode(mask)
