"""Sharded test prediction: where shard i of N of 06 writes, and the merge into one submission.

A 100,064-image test pass per member does not fit one 12-hour Kaggle session for big members, so
06 can predict shard i of N: a contiguous range of the ids in sample-submission order
(``testset.shard_range``). Each shard stores the blended, thresholded rows — its own small
``submission.csv.gz`` — because that is the smallest form by measurement (bench/bench_shards.py:
about 4 kB per image, 0.4 GB for the whole test set whatever the number of members, against
20-70 kB per image per member for full-resolution uint8 probability PNGs). So the merge is a
concatenation in shard order, which is sample-submission order.

Layout beside the submission ``<run_dir>/submission.csv.gz``::

    <run_dir>/submission_shards/shard-001-of-003.json     what the shard is (written first)
    <run_dir>/submission_shards/shard-001-of-003.csv.gz   its rows (written last, validated)

The record holds the shard's range, a digest of the whole id list and the ensemble that predicts
it, so the merge can prove that every shard is present, complete, of the same ensemble and that
together they hold every id once, in order — and name the shard that is not.

    python -m kaggle_utils.shards merge RUN_DIR --shards 3 [--data-dir DIR [--limit available]]
    python -m kaggle_utils.shards status RUN_DIR --shards 3
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaggle_utils.submission import HEADER, SubmissionError, validate_submission
from kaggle_utils.testset import shard_range

SUBMISSION = "submission.csv.gz"
_FORMAT = 1


def _base(out_path: Path) -> str:
    name = out_path.name
    return name[: -len(".csv.gz")] if name.endswith(".csv.gz") else name.split(".")[0]


def shard_dir(out_path: str | os.PathLike) -> Path:
    """The folder of a submission's shards: ``<run_dir>/submission_shards``."""
    out_path = Path(out_path)
    return out_path.parent / f"{_base(out_path)}_shards"


def shard_path(out_path: str | os.PathLike, shard: int, n_shards: int) -> Path:
    """Where shard ``shard`` of ``n_shards`` of the submission ``out_path`` writes its rows."""
    return shard_dir(out_path) / f"shard-{shard:03d}-of-{n_shards:03d}.csv.gz"


def _record_path(path: Path) -> Path:
    return path.with_name(path.name[: -len(".csv.gz")] + ".json")


def ids_digest(ids: Sequence[str]) -> str:
    """sha256 of the id list in order (as the submission writer's manifest has it)."""
    return hashlib.sha256("\n".join(str(i) for i in ids).encode("utf-8")).hexdigest()


def ensemble_key(members: Sequence[Any], settings: dict[str, Any]) -> dict[str, Any]:
    """What must be equal across shards: each member's name, weight, size and checkpoint (its
    last three path parts, member/stage/best.pt: shards may run on machines with other roots),
    and the blend / threshold settings."""
    rows = [
        {
            "name": m.name,
            "weight": round(float(m.weight), 6),
            "size": list(m.size),
            "checkpoint": "/".join(Path(m.checkpoint).parts[-3:]),
        }  # fmt: skip
        for m in members
    ]
    return json.loads(json.dumps({"members": rows, **settings}, default=str))


def begin_shard(
    path: Path,
    shard: int,
    n_shards: int,
    all_ids: Sequence[str],
    shape: tuple[int, int],
    ensemble: dict[str, Any],
) -> None:
    """Write the shard's record before it predicts; a finished shard file of another ensemble or
    id list is deleted first, so the merge never takes stale rows for this shard's."""
    from kaggle_utils.atomic import atomic_write_json

    start, stop = shard_range(len(all_ids), shard, n_shards)
    record = {
        "format": _FORMAT, "shard": shard, "n_shards": n_shards, "start": start, "stop": stop,
        "n_ids": len(all_ids), "ids_sha256": ids_digest(all_ids),
        "shard_sha256": ids_digest(all_ids[start:stop]), "first": all_ids[start],
        "last": all_ids[stop - 1], "shape": [int(shape[0]), int(shape[1])], "ensemble": ensemble,
    }  # fmt: skip
    rec = _record_path(path)
    old = json.loads(rec.read_text()) if rec.is_file() else None
    if old != record and path.exists():
        print(f"{path}: written by another ensemble or id list; predicting it again", flush=True)
        path.unlink()
    atomic_write_json(rec, record)


# --------------------------------------------------------------------------------------------------
# checking and merging


@dataclass
class MergeResult:
    """The merged submission (``path``, ``shape`` as ``predict.PredictResult`` has them)."""

    path: Path
    n_images: int
    n_shards: int
    shape: tuple[int, int]


def _located(out_path: Path, shard: int, n_shards: int) -> Path:
    """Where shard ``shard``'s rows are: this run's shard folder, else a copy in an upstream
    kernel's output (on Kaggle each shard kernel's /kaggle/working is mounted read-only under
    /kaggle/input for the merge kernel); a finished copy over a started one. The record and the
    rows are always taken from one folder."""
    from kaggle_utils.environment import upstream_copies

    path = shard_path(out_path, shard, n_shards)
    found = [path, *(folder / path.name for folder in upstream_copies(path.parent))]
    started = [p for p in found if _record_path(p).is_file()]
    return next((p for p in started if p.is_file()), started[0] if started else path)


def _upstream_note() -> str:
    from kaggle_utils.environment import KAGGLE_INPUT, on_kaggle

    return f", nor in any kernel output under {KAGGLE_INPUT}" if on_kaggle() else ""


def _rerun(i: int, n: int) -> str:
    return f"run 06 with shard={i}, n_shards={n}"


def _load_records(out_path: Path, n_shards: int) -> list[dict]:
    """Every shard's record, checked present, complete and consistent; names the first fault."""
    if n_shards < 1:
        raise ValueError(f"n_shards={n_shards}: a merge needs at least one shard")
    records = []
    for i in range(n_shards):
        path = _located(out_path, i, n_shards)
        rec = _record_path(path)
        if not rec.is_file():
            raise SubmissionError(
                f"shard {i} of {n_shards} is missing ({rec} not found{_upstream_note()}): "
                f"{_rerun(i, n_shards)}"
            )
        if not path.is_file():
            parts = path.with_name(path.name + ".parts")
            how = f"interrupted, its parts are in {parts}" if parts.is_dir() else "not finished"
            raise SubmissionError(
                f"shard {i} of {n_shards} is incomplete ({path} not written: {how}): "
                f"{_rerun(i, n_shards)} (it resumes)"
            )
        record = json.loads(rec.read_text())
        if record.get("format") != _FORMAT or (record["shard"], record["n_shards"]) != (
            i,
            n_shards,
        ):
            raise SubmissionError(f"{rec} is not shard {i} of {n_shards}: {_rerun(i, n_shards)}")
        records.append(record)
    first = records[0]
    for r in records[1:]:
        for key in ("n_ids", "ids_sha256", "shape", "ensemble"):
            if r[key] != first[key]:
                raise SubmissionError(
                    f"shard {r['shard']} of {n_shards} differs from shard 0 in {key} "
                    f"({r[key]} vs {first[key]}): predict every shard with the same ensemble, "
                    f"data and limit ({_rerun(r['shard'], n_shards)})"
                )
    return records


def _shard_ids(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        next(f, None)
        return [line.partition(",")[0] for line in f]


def _read_shard_ids(path: Path, shard: int, n_shards: int) -> list[str]:
    """The ids of a shard file; a torn or corrupt file fails naming the shard."""
    import zlib

    try:
        return _shard_ids(path)
    except (EOFError, OSError, zlib.error, UnicodeDecodeError) as exc:
        raise SubmissionError(
            f"shard {shard} of {n_shards} is truncated or corrupt ({path}: {type(exc).__name__}: "
            f"{exc}): delete it and {_rerun(shard, n_shards)}"
        ) from None


def check_shards(
    out_path: str | os.PathLike, n_shards: int, expected_ids: Sequence[str] | None = None
) -> list[dict]:
    """Every shard present, complete (its file valid and holding exactly its range's ids, in
    order), of one ensemble, together covering the id list once; returns the records.

    expected_ids: the sample-submission ids the merge must hold (from the data), checked against
    the id list the shards were predicted from.
    """
    out_path = Path(out_path)
    records = _load_records(out_path, n_shards)
    if expected_ids is not None:
        expected = [str(i) for i in expected_ids]
        if ids_digest(expected) != records[0]["ids_sha256"]:
            raise SubmissionError(
                f"the shards under {shard_dir(out_path)} were predicted from {records[0]['n_ids']} "
                f"ids, not these {len(expected)} sample-submission ids: same data and limit as 06"
            )
    shape = tuple(records[0]["shape"])
    for r in records:
        path = _located(out_path, r["shard"], n_shards)
        ids = _read_shard_ids(path, r["shard"], n_shards)
        if ids_digest(ids) != r["shard_sha256"] or len(ids) != r["stop"] - r["start"]:
            raise SubmissionError(
                f"shard {r['shard']} of {n_shards} is incomplete: {path} holds {len(ids)} rows, "
                f"its range has {r['stop'] - r['start']} ({r['first']} .. {r['last']}): "
                f"{_rerun(r['shard'], n_shards)}"
            )
        try:
            validate_submission(path, ids, shape)
        except SubmissionError as exc:
            raise SubmissionError(f"shard {r['shard']} of {n_shards} is invalid: {exc}") from None
    return records


def merge_shards(
    out_path: str | os.PathLike,
    n_shards: int,
    expected_ids: Sequence[str] | None = None,
    compresslevel: int = 1,
) -> MergeResult:
    """Concatenate the shards' rows, in shard order (= sample-submission order), into one
    ``out_path`` (.csv.gz), after ``check_shards``; written atomically, validated against the
    whole id list before it replaces anything, under the submission's lock."""
    from kaggle_utils.atomic import atomic_write
    from kaggle_utils.locks import submission_lock

    out_path = Path(out_path)
    records = check_shards(out_path, n_shards, expected_ids)
    shape = tuple(records[0]["shape"])
    paths = [_located(out_path, r["shard"], n_shards) for r in records]
    staging = out_path.with_name(f".{out_path.name}.merging.gz")

    def write(f) -> None:
        with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=compresslevel, mtime=0) as gz:
            gz.write(f"{HEADER}\n".encode())
            for path in paths:
                with gzip.open(path, "rb") as src:
                    src.readline()  # each shard's own header
                    shutil.copyfileobj(src, gz, 1 << 20)

    with submission_lock(out_path):
        atomic_write(staging, write)
        try:
            ids = [i for path in paths for i in _shard_ids(path)]
            if ids_digest(ids) != records[0]["ids_sha256"]:  # pragma: no cover - checked above
                raise SubmissionError(f"{staging}: merged ids differ from the shards' id list")
            report = validate_submission(staging, ids, shape)
            os.replace(staging, out_path)
        except BaseException:
            staging.unlink(missing_ok=True)
            raise
    print(f"merged {n_shards} shards into {out_path}: {report}", flush=True)
    return MergeResult(out_path, report.rows, n_shards, shape)  # type: ignore[arg-type]


def shard_status(out_path: str | os.PathLike, n_shards: int) -> list[str]:
    """One line per shard: done, interrupted, not started (for the merge kernel's log)."""
    lines = []
    for i in range(n_shards):
        path = _located(out_path, i, n_shards)
        if path.is_file() and _record_path(path).is_file():
            state = "done"
        elif path.with_name(path.name + ".parts").is_dir():
            state = "interrupted (parts on disk; rerun it to resume)"
        elif _record_path(path).is_file():
            state = "started, not finished"
        else:
            state = "not started"
        lines.append(f"shard {i} of {n_shards}: {state} ({path})")
    return lines


# --------------------------------------------------------------------------------------------------
# CLI


def _expected_ids(data_dir: str | None, limit: str | None, hq: bool) -> list[str] | None:
    if data_dir is None:
        return None
    from kaggle_utils.layout import find_data
    from kaggle_utils.testset import ids_to_predict

    lim: Any = int(limit) if limit and limit.isdigit() else limit
    return ids_to_predict(find_data(data_dir), hq, lim)[1]


def main(argv: Sequence[str] | None = None) -> int:
    """``merge`` / ``status`` of a run folder's shards."""
    parser = argparse.ArgumentParser(
        prog="python -m kaggle_utils.shards", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=["merge", "status"])
    parser.add_argument("run_dir", help="the run folder holding submission_shards/")
    parser.add_argument("--shards", type=int, required=True, help="N: how many shards 06 wrote")
    parser.add_argument("--name", default=SUBMISSION, help=f"the submission's name ({SUBMISSION})")
    parser.add_argument(
        "--data-dir", help="check the merge holds this data's sample-submission ids"
    )
    parser.add_argument("--limit", help="with --data-dir: 06's limit (available, N)")
    parser.add_argument("--hq", action="store_true", help="with --data-dir: 06 read test_hq")
    args = parser.parse_args(argv)
    out_path = Path(args.run_dir) / args.name
    if args.command == "status":
        print("\n".join(shard_status(out_path, args.shards)))
        return 0
    try:
        merge_shards(out_path, args.shards, _expected_ids(args.data_dir, args.limit, args.hq))
    except (SubmissionError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
