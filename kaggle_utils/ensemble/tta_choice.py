"""Which TTA setting 05 records: each candidate of the ensemble file's `tta:` scored on OOF.

Every candidate gets the weight and threshold search 06 would submit with (`search.choose`), and
the best OOF Dice wins; a setting with more forwards must beat every cheaper one by more than
`min_gain`, so ties and noise keep the cheaper submission (06's time grows with the forwards).

With 06's post-processing (guided upsampling, largest component) the candidates are ranked by the
Dice of the masks 06 writes (`scoring.submitted_score`), not by the search's bilinear Dice: on the
real sample's 12 validation cars the search ranked the plain pass first (0.98245 vs hflip
0.98223) while the written masks ranked hflip + scales 0.98974 > hflip 0.98966 > none 0.98953.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from kaggle_utils.ensemble.oof import OOFSet
from kaggle_utils.ensemble.scoring import submitted_score
from kaggle_utils.ensemble.search import choose
from kaggle_utils.tta import TTASetting, parse_setting

__all__ = ["choose_tta"]


def choose_tta(
    sources: dict[str, OOFSet],
    candidates: Sequence[Any],
    *,
    min_gain: float = 1e-5,
    largest_component: bool = False,
    guided_filter: Any = None,
    **choose_kw: Any,
) -> tuple[str, TTASetting, pd.DataFrame]:
    """(label of the OOF set to tune on, the setting 06 applies, a table of the candidates).

    sources: `oof.probability_sources` over the same candidates. Without candidates the stored
    OOF PNGs are tuned on and the plain pass ("none") is recorded, as before settings existed.
    largest_component, guided_filter: 06's post-processing (the ensemble file's); when set, the
    candidates are ranked by the Dice of the masks 06 writes ("submitted_dice").
    choose_kw: `search.choose`'s (mode, fixed_threshold, ...).
    """
    settings = [parse_setting(c) for c in candidates]
    if not settings:
        return "stored", parse_setting("none"), pd.DataFrame()
    missing = [s.label for s in settings if s.label not in sources]
    if missing:
        raise ValueError(
            f"TTA candidates {missing} have no OOF set: build sources with "
            "probability_sources(..., tta=<the same candidates>)"
        )
    post = largest_component or guided_filter is not None
    rows = []
    for s in settings:
        c = choose(sources[s.label], **choose_kw)
        row = {
            "tta": s.label,
            "transforms": " ".join(s.names),
            "forwards": s.forwards,
            "oof_dice": c.dice,
            "threshold": c.threshold,
        }
        if post:
            mode = choose_kw.get("mode", "mean")
            written = submitted_score(
                sources[s.label], c.weights, c.threshold, mode, largest_component, guided_filter
            )
            row["submitted_dice"] = float(written["dice"].mean())
        rows.append(row)
    table = pd.DataFrame(rows)
    key = "submitted_dice" if post else "oof_dice"
    best = None
    for i in table.sort_values("forwards", kind="stable").index:
        if best is None or table.at[i, key] > table.at[best, key] + min_gain:
            best = i
    table["chosen"] = table.index == best
    setting = settings[int(best)]  # type: ignore[arg-type]
    return setting.label, setting, table
