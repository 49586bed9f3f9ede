"""Reading a pseudo-label folder for a stage: checked against the data, the kept rows chosen."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from kaggle_utils.pseudo.folder import COLUMNS, CSV_NAME, pseudo_dir

if TYPE_CHECKING:
    from kaggle_utils.config.member import PseudoLabelsConfig


@dataclass
class PseudoLabels:
    """The pseudo-labelled test images one stage trains on (most confident first)."""

    folder: Path
    ids: list[str]
    fractions: list[float]

    def record(self) -> dict[str, Any]:
        """What metrics.json keeps of them."""
        worst = max(self.fractions) if self.fractions else None
        return {
            "dir": str(self.folder),
            "n": len(self.ids),
            "ids": list(self.ids),
            "max_uncertain_fraction": worst,
        }


def _read_table(folder: Path, where: str) -> pd.DataFrame:
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{where}: pseudo-label folder {folder} not found; write it first with "
            f"`python -m kaggle_utils.pseudo --run-dir RUN --out {folder.name}`"
        )
    csv = folder / CSV_NAME
    if not csv.is_file():
        raise FileNotFoundError(
            f"{where}: {folder} has no {CSV_NAME} (an unfinished or foreign folder); write it "
            "again with `python -m kaggle_utils.pseudo`"
        )
    table = pd.read_csv(csv, dtype={"id": str}, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{csv}: columns {missing} missing; expected {', '.join(COLUMNS)}")
    table["kept"] = table["kept"].astype(str).str.lower().isin(("true", "1"))
    table["uncertain_fraction"] = pd.to_numeric(table["uncertain_fraction"], errors="raise")
    return table


def _check_ids(table: pd.DataFrame, csv: Path, data: Any, val_cars: set[str]) -> None:
    """Every row a test image, none a training one, none of a validation car; kept maps exist."""
    from kaggle_utils.index import test_index, train_index

    train_ids = set(train_index(data)["id"])
    tests = test_index(data).set_index("id")["car"]
    for row, (image_id, kept) in enumerate(zip(table["id"], table["kept"], strict=True)):
        line = f"{csv}: row {row + 1} (line {row + 2}), id {image_id}"
        if image_id in train_ids:
            raise ValueError(
                f"{line} is a training image: pseudo-labels are test images only; remove the "
                "row or write the folder again with `python -m kaggle_utils.pseudo`"
            )
        if image_id not in tests.index:
            raise ValueError(f"{line} is not a test image of {data.root}; write the folder again")
        if tests[image_id] in val_cars:
            raise ValueError(f"{line}: its car {tests[image_id]} is a validation car; remove it")
        if kept and not (csv.parent / f"{image_id}.png").is_file():
            raise FileNotFoundError(f"{line} is kept but {image_id}.png is missing; write again")


def load_pseudo_labels(
    cfg: PseudoLabelsConfig,
    run_dir: str | os.PathLike,
    data: Any,
    val_index: pd.DataFrame,
    where: str = "pseudo_labels",
) -> PseudoLabels:
    """The stage key's pseudo-labels, validated against the data: the folder and its CSV exist,
    every id is a test image (a training id is refused naming the CSV's row), no validation car;
    then the kept rows below `max_uncertain`, most confident first, at most `max_images`."""
    folder = pseudo_dir(cfg.dir, run_dir)
    table = _read_table(folder, where)
    _check_ids(table, folder / CSV_NAME, data, set(map(str, val_index["car"])))
    chosen = table[table["kept"]]
    if cfg.max_uncertain is not None:
        chosen = chosen[chosen["uncertain_fraction"] < cfg.max_uncertain]
    chosen = chosen.sort_values(["uncertain_fraction", "id"], kind="stable").head(
        cfg.max_images or len(chosen)
    )
    if chosen.empty:
        raise ValueError(
            f"{where}: no image of {folder / CSV_NAME} is kept below max_uncertain="
            f"{cfg.max_uncertain}; raise it, or write the folder with a higher --max-uncertain"
        )
    return PseudoLabels(folder, list(chosen["id"]), [float(f) for f in chosen.uncertain_fraction])
