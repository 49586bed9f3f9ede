"""Checking a finished submission csv(.gz) fast: header, every expected id once, each RLE valid,
parsed vectorised without building masks; and reading it back as a DataFrame."""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_utils.rle import MASK_SHAPE, _fast_tokens, rle_runs
from kaggle_utils.submission.ids import HEADER, SubmissionError, _examples

_VALIDATE_BATCH = 8  # rows parsed per vectorised call: small enough to stay in cache


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
