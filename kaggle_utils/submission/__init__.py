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

The modules, each importable on its own:

- `ids`: ``read_sample_submission`` (ids in order), ``HEADER``, ``SubmissionError``;
- `parts`: the part-file format (raw deflate pieces, ``crc32_combine``), writing and checking parts;
- `writer`: ``SubmissionWriter``;
- `validate`: ``validate_submission``, ``SubmissionReport``, ``submission_frame``.
"""

from __future__ import annotations

from kaggle_utils.submission.ids import HEADER, SubmissionError, read_sample_submission
from kaggle_utils.submission.parts import crc32_combine
from kaggle_utils.submission.validate import (
    SubmissionReport,
    submission_frame,
    validate_submission,
)
from kaggle_utils.submission.writer import SubmissionWriter

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
