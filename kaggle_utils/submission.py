"""Submission files: ordered ids, a resumable chunked ``submission.csv.gz`` writer, a fast validator.

The post-model half of a submission, independent of any model. ``SubmissionWriter`` takes
``(id, mask or RLE)`` rows in sample-submission order, RLE-encodes masks as they arrive (fast,
see ``kaggle_utils.rle``) and hands every finished chunk of rows to background workers that
compress it and write it atomically as a part file in ``<out>.parts/``. A restarted run sees
which chunks exist and continues after them. ``close()`` / ``finalize()`` joins the parts into
the final file atomically.

Parts are raw deflate streams ending on a byte boundary (pigz's trick), so joining them is a
byte copy and the result is one ordinary single-member gzip stream (CRCs are combined
arithmetically) — nothing is decompressed or recompressed at the end.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_utils.atomic import atomic_write
from kaggle_utils.rle import MASK_SHAPE, _fast_tokens, rle_encode, rle_runs

__all__ = [
    "HEADER",
    "SubmissionError",
    "SubmissionReport",
    "SubmissionWriter",
    "crc32_combine",
    "read_sample_submission",
    "submission_frame",
    "validate_submission",
]

HEADER = "img,rle_mask"
_PART_MAGIC = b"KUSUBPT1"
_PART_HEAD = struct.Struct("<8sIQI")  # magic, crc32 of the text, text length, rows
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, mtime 0, OS unknown
_MANIFEST = "manifest.json"
_VALIDATE_BATCH = 8  # rows parsed per vectorised call: small enough to stay in cache


class SubmissionError(ValueError):
    """A submission file or its inputs are wrong; the message names the rows/ids and the faults."""


def _examples(items: Sequence[str], k: int = 5) -> str:
    shown = ", ".join(str(i) for i in list(items)[:k])
    return shown + (", ..." if len(items) > k else "")


# ------------------------------------------------------------------------------------ ids


def read_sample_submission(
    sample: pd.DataFrame | str | os.PathLike, subset: Iterable[str] | None = None
) -> list[str]:
    """Image names in sample-submission order (column ``img``), optionally only ``subset``.

    ``sample``: the DataFrame or a path (csv / csv.zip). ``subset``: a partial run (e.g. the 33
    real test images of the sample); each must be in the sample submission (a name without
    ``.jpg`` is accepted); the result keeps the sample's order.
    """
    where = "sample submission"
    if not isinstance(sample, pd.DataFrame):
        where = str(sample)
        sample = pd.read_csv(sample, usecols=lambda c: c == "img", dtype=str)
    if "img" not in sample.columns:
        raise SubmissionError(f"{where} has no 'img' column (columns: {list(sample.columns)})")
    ids = sample["img"].astype(str).tolist()
    dup = pd.Index(ids)[pd.Index(ids).duplicated()].unique().tolist()
    if dup:
        raise SubmissionError(f"{where} lists {len(dup)} ids twice: {_examples(dup)}")
    if subset is None:
        return ids
    known = set(ids)
    wanted, unknown = set(), []
    for i in subset:
        i = str(i)
        name = i if i in known or f"{i}.jpg" not in known else f"{i}.jpg"
        (wanted.add(name) if name in known else unknown.append(i))
    if unknown:
        raise SubmissionError(
            f"{len(unknown)} requested ids are not in the {where}: {_examples(unknown)}"
        )
    return [i for i in ids if i in wanted]


# ------------------------------------------------------------------------------ gzip parts

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


# ---------------------------------------------------------------------------------- writer


class SubmissionWriter:
    """Resumable, chunked, streamed writer of ``img,rle_mask`` rows to ``out_path`` (.csv.gz).

    ``ids``: every row of the submission, in order (from ``read_sample_submission``).
    Rows go in with ``add(id, mask)`` (or lists/batches) in that order; masks are encoded
    inline, and each finished chunk of ``chunk_size`` rows is compressed and written by one of
    ``workers`` background threads (zlib releases the GIL), at most ``workers`` chunks in flight:
    memory stays at about one chunk of RLE text per worker, whatever the number of images.
    ``write_from(mask_fn)`` instead builds and encodes masks in a process pool.

    A restart with the same ids and chunk size continues: ``next_index`` / ``n_done`` say where,
    ``pending_ids()`` lists what is left, and rows of already written chunks are ignored.
    """

    def __init__(
        self,
        out_path: str | os.PathLike,
        ids: Sequence[str],
        chunk_size: int = 1000,
        *,
        shape: tuple[int, int] = MASK_SHAPE,
        workers: int | None = None,
        compresslevel: int = 1,
    ) -> None:
        self.out_path = Path(out_path)
        if not self.out_path.name.endswith(".gz"):
            raise ValueError(
                f"{self.out_path}: the submission is written gzip-compressed (.csv.gz)"
            )
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.ids = [str(i) for i in ids]
        self._index = {image_id: k for k, image_id in enumerate(self.ids)}
        if len(self._index) != len(self.ids):
            dup = pd.Index(self.ids)[pd.Index(self.ids).duplicated()].unique().tolist()
            raise SubmissionError(f"{len(dup)} ids appear twice in the id list: {_examples(dup)}")
        self.chunk_size = int(chunk_size)
        self.shape = (int(shape[0]), int(shape[1]))
        self.workers = max(1, workers or min(4, os.cpu_count() or 1))
        self.compresslevel = int(compresslevel)
        self.parts_dir = self.out_path.with_name(self.out_path.name + ".parts")
        self.n_chunks = math.ceil(len(self.ids) / self.chunk_size)
        self._rows: list[str] = []
        self._inflight: dict[int, Future] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._done = self._open_parts()
        self._pos = 0
        self._skip_done()

    # -- resume bookkeeping
    def _manifest(self) -> dict:
        digest = hashlib.sha256("\n".join(self.ids).encode("utf-8")).hexdigest()
        return {"format": 1, "n_ids": len(self.ids), "chunk_size": self.chunk_size,
                "ids_sha256": digest, "shape": list(self.shape)}  # fmt: skip

    def _open_parts(self) -> set[int]:
        manifest = self._manifest()
        path = self.parts_dir / _MANIFEST
        if path.exists():
            old = json.loads(path.read_text())
            if old != manifest:
                raise SubmissionError(
                    f"{self.parts_dir} holds parts of a different submission ({old.get('n_ids')} "
                    f"ids, chunk_size {old.get('chunk_size')}, shape {old.get('shape')}; now "
                    f"{len(self.ids)} ids, chunk_size {self.chunk_size}, shape "
                    f"{list(self.shape)}); delete that folder to start over"
                )
        else:
            self.parts_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
        done = set()
        for p in sorted(self.parts_dir.glob("part-*.bin")):
            c = _chunk_number(p)
            fault = "not a chunk of this submission" if c is None or c >= self.n_chunks else None
            fault = fault or _part_fault(p, self._chunk_ids(c))  # type: ignore[arg-type]
            if fault is None:
                done.add(c)
                continue
            rows = len(self._chunk_ids(c)) if c is not None and c < self.n_chunks else 0
            redo = f"its {rows} rows are predicted again" if rows else "nothing needs it"
            print(f"dropping {p}: {fault}; {redo}", flush=True)
            p.unlink(missing_ok=True)
        return done

    def _chunk_ids(self, c: int) -> list[str]:
        return self.ids[c * self.chunk_size : (c + 1) * self.chunk_size]

    def _part_path(self, c: int) -> Path:
        return self.parts_dir / f"part-{c:06d}.bin"

    def _skip_done(self) -> None:
        while self._pos < len(self.ids) and self._pos % self.chunk_size == 0:
            c = self._pos // self.chunk_size
            if c not in self._done and c not in self._inflight:
                break
            self._pos = min(len(self.ids), (c + 1) * self.chunk_size)

    @property
    def next_index(self) -> int:
        """Index in ``ids`` of the next row to add (``len(ids)`` when every row is in)."""
        return self._pos

    @property
    def n_done(self) -> int:
        """Rows already written, as a prefix of ``ids`` (resume from ``ids[n_done:]``)."""
        c = 0
        while c < self.n_chunks and c in self._done:
            c += 1
        return min(len(self.ids), c * self.chunk_size)

    def done_ids(self) -> list[str]:
        """Ids whose rows are safely on disk (finished part files)."""
        self._collect()
        return [i for c in sorted(self._done) for i in self._chunk_ids(c)]

    def pending_ids(self) -> list[str]:
        """Ids still to add, in order (chunks not on disk, from ``next_index`` on)."""
        out = []
        for c in range(self._pos // self.chunk_size if self.ids else 0, self.n_chunks):
            if c in self._done or c in self._inflight:
                continue
            start = max(c * self.chunk_size, self._pos)
            out += self.ids[start : (c + 1) * self.chunk_size]
        return out

    @property
    def complete(self) -> bool:
        self._collect()
        return len(self._done) == self.n_chunks

    # -- adding rows
    def add(self, image_id: str | Sequence[str], mask=None) -> int:
        """Add one row, or a batch (a list of ids and a matching batch of masks / RLE strings).

        A mask is a (H, W) array or tensor (nonzero = car), an RLE string (checked), or None
        (empty). Returns the number of rows taken (rows of chunks already on disk are skipped).
        """
        if isinstance(image_id, str):
            return self._add_one(image_id, mask)
        batch = list(image_id)
        if mask is None:
            mask = [None] * len(batch)
        if len(mask) != len(batch):
            raise SubmissionError(f"{len(batch)} ids but {len(mask)} masks")
        return sum(self._add_one(i, m) for i, m in zip(batch, mask, strict=True))

    def _add_one(self, image_id: str, mask) -> int:
        k = self._index.get(image_id)
        if k is None:
            raise SubmissionError(f"{image_id!r} is not one of this submission's ids")
        if k != self._pos:
            if k // self.chunk_size in self._done or k // self.chunk_size in self._inflight:
                return 0  # written by an earlier run
            expected = self.ids[self._pos] if self._pos < len(self.ids) else "nothing (all added)"
            raise SubmissionError(
                f"rows must come in submission order: expected {expected} (row {self._pos + 1}), "
                f"got {image_id} (row {k + 1})"
            )
        self._rows.append(f"{image_id},{_to_rle(image_id, mask, self.shape)}\n")
        self._pos += 1
        if self._pos % self.chunk_size == 0 or self._pos == len(self.ids):
            self._submit((self._pos - 1) // self.chunk_size)
        return 1

    def _submit(self, c: int) -> None:
        text = "".join(self._rows).encode("utf-8")
        rows = len(self._rows)
        self._rows = []
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="submission")
        self._inflight[c] = self._pool.submit(
            _write_part, str(self._part_path(c)), text, rows, self.compresslevel
        )
        self._collect(limit=self.workers)
        self._skip_done()

    def _collect(self, limit: int | None = None) -> None:
        """Book finished background writes; block on the oldest while more than limit in flight."""
        for c in sorted(self._inflight):
            fut = self._inflight[c]
            if fut.done() or (limit is not None and len(self._inflight) > limit):
                fut.result()  # re-raises a worker's error
                del self._inflight[c]
                self._done.add(c)

    def write_from(
        self,
        mask_fn: Callable[[str], object],
        processes: int | None = None,
        mp_context: str | None = None,
    ) -> None:
        """Write every pending chunk with a process pool: ``mask_fn(image_id)`` runs in workers.

        For masks that can be produced where they are encoded (files, a cheap generator):
        no mask crosses a process boundary, each worker encodes and compresses whole chunks.
        ``mask_fn`` must be picklable (a module-level function or a ``functools.partial``).
        """
        if self._rows:
            raise SubmissionError(
                "write_from needs no half-added chunk; add rows up to a chunk end"
            )
        self._collect(limit=0)
        todo = [
            c for c in range(self._pos // self.chunk_size, self.n_chunks) if c not in self._done
        ]
        n = processes or os.cpu_count() or 1
        ctx = multiprocessing.get_context(mp_context) if mp_context else None
        with ProcessPoolExecutor(
            n, mp_context=ctx, initializer=_init_worker, initargs=(mask_fn,)
        ) as pool:
            running: dict[Future, int] = {}
            for c in todo:
                args = (str(self._part_path(c)), self._chunk_ids(c), self.compresslevel, self.shape)
                running[pool.submit(_encode_chunk, *args)] = c
                if len(running) >= 2 * n:
                    self._finish_some(running)
            while running:
                self._finish_some(running)
        self._pos = len(self.ids)

    def _finish_some(self, running: dict[Future, int]) -> None:
        finished, _ = wait(list(running), return_when="FIRST_COMPLETED")
        for fut in finished:
            fut.result()
            self._done.add(running.pop(fut))

    # -- ending
    def flush(self) -> None:
        """Wait for every chunk handed to the workers to be on disk."""
        self._collect(limit=0)

    def abort(self) -> None:
        """Stop: drop the half-filled chunk, let finished chunks land (they resume later)."""
        self._rows = []
        try:
            self.flush()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def close(self, validate: bool = False) -> Path | None:
        """Flush; when every row is in, join the parts into ``out_path`` (returned), else keep
        the parts for a later run and return None."""
        try:
            self.flush()
        finally:
            self._shutdown()
        return self.finalize(validate=validate) if self.complete else None

    def finalize(self, validate: bool = False) -> Path:
        """Join the parts into ``out_path`` atomically (header ``img,rle_mask``), remove them.

        ``validate``: check the joined file with ``validate_submission`` before the parts go.
        """
        self.flush()
        missing = [c for c in range(self.n_chunks) if c not in self._done]
        if missing or self._rows:
            first = self._chunk_ids(missing[0])[0] if missing else self.ids[self._pos]
            raise SubmissionError(
                f"{len(missing)} of {self.n_chunks} chunks of {self.out_path.name} are not "
                f"written yet (first missing row: {first}); add the rest, then finalize"
            )
        self._check_parts()
        header = f"{HEADER}\n".encode()
        level = self.compresslevel

        def join(f) -> None:
            crc, total = zlib.crc32(header), len(header)
            f.write(_GZIP_HEADER)
            f.write(_deflate_piece(header, level))
            for c in range(self.n_chunks):
                with open(self._part_path(c), "rb") as part:
                    _, pcrc, plen, _ = _PART_HEAD.unpack(part.read(_PART_HEAD.size))
                    crc, total = crc32_combine(crc, pcrc, plen), total + plen
                    shutil.copyfileobj(part, f, 1 << 20)
            f.write(_FINAL_BLOCK)
            f.write(struct.pack("<II", crc, total & 0xFFFFFFFF))

        # joined under a temporary name: the final name only ever holds a checked file
        joined = self.out_path.with_name(f".joining.{self.out_path.name}")  # still ends .gz
        try:
            atomic_write(joined, join)
            if validate:
                validate_submission(joined, self.ids, self.shape)
            os.replace(joined, self.out_path)
        except SubmissionError as exc:
            raise SubmissionError(
                f"{self.out_path} not written (its parts stay in {self.parts_dir}): {exc}"
            ) from None
        finally:
            joined.unlink(missing_ok=True)
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        return self.out_path

    def _check_parts(self) -> None:
        """Before the join: every part must be sound. A bad one is deleted (its rows then count
        as pending, so a rerun predicts them again) and the error names it."""
        for c in range(self.n_chunks):
            path = self._part_path(c)
            fault = _part_fault(path, self._chunk_ids(c))
            if fault is not None:
                path.unlink(missing_ok=True)
                self._done.discard(c)
                raise SubmissionError(
                    f"{path}: {fault}; deleted it, {self.out_path.name} not written: run again "
                    f"to predict its {len(self._chunk_ids(c))} rows (the other parts resume)"
                )

    def __enter__(self) -> SubmissionWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ------------------------------------------------------------------------------- validate


@dataclass
class SubmissionReport:
    """What a valid submission holds."""

    path: Path
    rows: int
    empty_masks: int
    runs: int

    def __str__(self) -> str:
        return (f"{self.path.name}: {self.rows} rows, all valid; {self.empty_masks} empty masks, "
                f"{self.runs / max(self.rows, 1):.0f} runs per mask")  # fmt: skip


def _check_batch(rles: list[bytes | None], n_pixels: int) -> tuple[list[int], int, int]:
    """Validate many rows' RLE at once, vectorised over all their tokens.

    Returns (indices of failing rows, empty rows, runs). A failing row is any whose text is not
    single-space separated digits or whose runs break a rule; the caller re-parses only those.
    """
    idx = [k for k, r in enumerate(rles) if r]
    faults = [k for k, r in enumerate(rles) if r is None]
    n_empty = sum(1 for r in rles if r is not None and not r)
    if not idx:
        return faults, n_empty, 0
    texts = [rles[k] for k in idx]
    counts = np.array([t.count(b" ") + 1 for t in texts], dtype=np.int64)
    vals = _fast_tokens(np.frombuffer(b" ".join(texts), dtype=np.uint8))
    if vals is None or vals.size != counts.sum() or (counts % 2).any():
        return sorted(faults + idx), n_empty, 0  # unusual text somewhere: find it row by row
    starts, lengths = vals[0::2], vals[1::2]
    row_of_run = np.repeat(np.arange(len(texts)), counts // 2)
    ends = starts + lengths - 1  # last pixel, 1-based
    wrong = (starts < 1) | (lengths < 1) | (ends > n_pixels)
    order = (starts[1:] <= ends[:-1]) & (row_of_run[1:] == row_of_run[:-1])
    wrong[1:] |= order
    bad_rows = np.unique(row_of_run[wrong]).tolist()
    return sorted(faults + [idx[r] for r in bad_rows]), n_empty, int(starts.size)


def _iter_lines(path: Path) -> Iterator[bytes]:
    """The file's lines; a truncated or corrupt gzip fails as one line naming the file."""
    opener = gzip.open if path.name.endswith(".gz") else open
    n = 0
    try:
        with opener(path, "rb") as f:
            for line in f:
                n += 1
                yield line
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise SubmissionError(
            f"{path} is truncated or corrupt after {n} lines ({type(exc).__name__}: {exc}; "
            f"{path.stat().st_size} bytes): write it again (rerun 06_submit; its parts resume)"
        ) from None


def validate_submission(
    path: str | os.PathLike,
    expected_ids: Iterable[str] | None = None,
    shape: tuple[int, int] = MASK_SHAPE,
    *,
    ids: Iterable[str] | None = None,
    max_examples: int = 5,
) -> SubmissionReport:
    """Check a submission csv(.gz): header ``img,rle_mask``, every expected id exactly once, and
    each RLE valid for ``shape`` (tokens, starts/lengths >= 1, sorted, no overlap, inside the
    image) — parsed vectorised, without building masks (~100k rows in seconds).

    Raises ``SubmissionError`` listing every kind of fault: bad rows (row number, id, fault),
    duplicated, missing and unexpected ids (each with a count and a few examples).
    """
    path = Path(path)
    if expected_ids is None:
        expected_ids = ids
    expected = None if expected_ids is None else [str(i) for i in expected_ids]
    n_pixels = int(shape[0]) * int(shape[1])
    lines = _iter_lines(path)
    first = next(lines, b"").rstrip(b"\r\n")
    if first.lstrip(b"\xef\xbb\xbf") != HEADER.encode():
        raise SubmissionError(
            f"{path}: header is {first[:60].decode('utf-8', 'replace')!r}, expected {HEADER!r}"
        )
    seen: set[str] = set()
    dups: list[str] = []
    bad: list[str] = []
    n_bad = rows = empty = runs = 0
    batch: list[tuple[int, str, bytes]] = []

    def check(batch: list[tuple[int, str, bytes]]) -> None:
        nonlocal n_bad, empty, runs
        faults, n_empty, n_runs = _check_batch([b[2] for b in batch], n_pixels)
        empty += n_empty
        runs += n_runs
        for k in faults:  # only failing rows are parsed again, one by one, to name the fault
            row, name, rle = batch[k]
            try:
                if rle is None:
                    raise ValueError(f"bad RLE for {name}: no comma (expected 'img,rle_mask')")
                rle_runs(rle, n_pixels, name)
                continue  # pragma: no cover - the batch check and the row check agree
            except ValueError as e:
                n_bad += 1
                if len(bad) < max_examples:
                    bad.append(f"row {row} ({name}): {str(e).split(': ', 1)[-1]}")

    for row, line in enumerate(lines, start=2):
        image_id, comma, rle = line.rstrip(b"\r\n").partition(b",")
        name = image_id.decode("utf-8", "replace").strip('"')
        rows += 1
        if name in seen:
            dups.append(name)
        seen.add(name)
        batch.append((row, name, rle.strip(b'" ') if comma else None))
        if len(batch) == _VALIDATE_BATCH:
            check(batch)
            batch = []
    if batch:
        check(batch)
    problems = []
    if n_bad:
        problems.append(
            f"{n_bad} rows with invalid RLE for {shape[0]}x{shape[1]}: " + "; ".join(bad)
        )
    if dups:
        problems.append(f"{len(dups)} duplicated ids: {_examples(sorted(set(dups)), max_examples)}")
    if expected is not None:
        want = set(expected)
        missing = [i for i in expected if i not in seen]
        extra = sorted(seen - want)
        if missing:
            problems.append(
                f"{len(missing)} of {len(expected)} expected ids are missing: "
                f"{_examples(missing, max_examples)}"
            )
        if extra:
            problems.append(f"{len(extra)} unexpected ids: {_examples(extra, max_examples)}")
    if problems:
        raise SubmissionError(f"{path} is not a valid submission:\n  - " + "\n  - ".join(problems))
    return SubmissionReport(path, rows, int(empty), int(runs))


def submission_frame(path: str | os.PathLike) -> pd.DataFrame:
    """The submission as a DataFrame (``img``, ``rle_mask``; empty masks as "")."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)
