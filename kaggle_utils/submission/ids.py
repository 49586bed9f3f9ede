"""The submission's rows: ids in sample-submission order, the header, and the error every part of
``kaggle_utils.submission`` raises."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import pandas as pd

HEADER = "img,rle_mask"


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
