"""``SubmissionWriter``: the resumable, chunked, streamed ``submission.csv.gz`` writer.

Rows are RLE-encoded as they arrive; every finished chunk goes to a background worker that writes
it as a part file (``parts``) in ``<out>.parts/``; a restarted run continues after the chunks on
disk; ``close()`` / ``finalize()`` checks the parts and joins them into the final file atomically.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import shutil
import struct
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from pathlib import Path

import pandas as pd

from kaggle_utils.atomic import atomic_write
from kaggle_utils.rle import MASK_SHAPE
from kaggle_utils.submission.ids import HEADER, SubmissionError, _examples
from kaggle_utils.submission.parts import (
    _FINAL_BLOCK,
    _GZIP_HEADER,
    _PART_HEAD,
    _chunk_number,
    _deflate_piece,
    _encode_chunk,
    _init_worker,
    _part_fault,
    _to_rle,
    _write_part,
    crc32_combine,
)
from kaggle_utils.submission.validate import validate_submission

_MANIFEST = "manifest.json"


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
