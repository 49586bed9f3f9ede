"""K folds grouped by car: all 16 angles of a car land in one fold, so validation never sees a
training car from another angle (the seed project's validation overlapped its training set).

Cars are dealt round-robin to folds after sorting them by stratum (make, or mask-area bucket) and a
seeded shuffle, which balances every stratum across folds to within one car and the fold sizes to
within one car overall. Each car carries one label, so this matches what a stratified group k-fold
optimises, without another dependency.

``stratify="area"`` is the 1st-place team's rule: cars sorted by mean mask area (largest first)
and dealt to folds in snake order (0, 1, .., k-1, k-1, .., 0, 0, 1, ..), so every fold gets one
car of each band of k and the fold mean areas differ by far less than with shuffled buckets.

`make_split` gives one member its (train, val) rows: 02_split's folds.csv when it exists, else
`split_by_car`, then the member's image caps (whole cars first).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from kaggle_utils.config import MemberConfig

STRATIFY = ("area", "make", "coverage", None)
FOLD_COLUMNS = ["id", "car", "fold"]


def coverage_buckets(car_coverage: pd.Series, n_buckets: int = 5) -> pd.Series:
    """Quantile buckets of per-car mean mask coverage (car fraction of the image), labelled 0..B-1."""
    n_buckets = max(1, min(n_buckets, car_coverage.nunique()))
    if n_buckets == 1:
        return pd.Series(0, index=car_coverage.index)
    # rank first so that ties cannot collapse quantile edges
    ranks = car_coverage.rank(method="first")
    return pd.qcut(ranks, n_buckets, labels=False).astype(int)


def _report(line: str) -> None:
    print(line, flush=True)


def _make_strata(index: pd.DataFrame, n_folds: int) -> tuple[pd.Series, str]:
    """Cars by make; without any make (no metadata.csv or no 'make' column) by coverage, else
    unstratified, saying so in one line: a split never changes its basis silently."""
    make = index.groupby("car", sort=True)["make"].first() if "make" in index.columns else None
    if make is None or make.isna().all():
        has_cov = "coverage" in index.columns and index["coverage"].notna().all()
        instead = "coverage" if has_cov else None
        _report(
            "no car has a make (metadata.csv missing or without a 'make' column): folds "
            f"stratified by {instead or 'nothing (the index has no coverage either)'} instead"
        )
        return _car_strata(index, instead, n_folds)[0], f"{instead or 'none'} (no make)"
    if make.isna().any():
        _report(
            f"{int(make.isna().sum())} of {len(make)} cars have no make in metadata.csv: "
            "stratified together as make 'unknown'"
        )
    return make.fillna("unknown").astype(str), "make"


def _car_strata(index: pd.DataFrame, stratify: str | None, n_folds: int) -> tuple[pd.Series, str]:
    """One stratum label per car, and what they were stratified by (for the split's label)."""
    if stratify is None:
        return pd.Series("all", index=sorted(index["car"].unique())), "none"
    if stratify == "make":
        return _make_strata(index, n_folds)
    if stratify == "coverage":
        cov = _car_coverage(index, stratify)
        n_buckets = max(1, min(5, len(cov) // n_folds))
        return coverage_buckets(cov, n_buckets).astype(str), "coverage"
    raise ValueError(f"stratify must be one of {STRATIFY}, got {stratify!r}")


def _car_coverage(index: pd.DataFrame, stratify: str) -> pd.Series:
    """Mean mask coverage per car (sorted by car); fails naming the fix without it."""
    if "coverage" not in index.columns:
        raise ValueError(
            f"stratify={stratify!r} needs a 'coverage' column in the index "
            "(add it with kaggle_utils.eda.with_coverage(data, index))"
        )
    cov = index.groupby("car", sort=True)["coverage"].mean()
    if cov.isna().any():
        missing = list(cov.index[cov.isna()])[:5]
        raise ValueError(f"stratify={stratify!r}: no coverage for cars {missing}")
    return cov


def area_dealt(car_area: pd.Series, n_folds: int, start: int = 0) -> dict[str, int]:
    """{car: fold}: cars sorted by mean mask area, largest first (ties by name), dealt in snake
    order (0..k-1, k-1..0, ...), fold numbers rotated by `start`. Snake order, not plain
    round-robin, so fold 0 is not the larger car of every band of k."""
    order = sorted(car_area.index, key=lambda car: (-float(car_area[car]), str(car)))
    folds = {}
    for i, car in enumerate(order):
        band, pos = divmod(i, n_folds)
        fold = pos if band % 2 == 0 else n_folds - 1 - pos
        folds[str(car)] = (fold + start) % n_folds
    return folds


def folds_by_car(
    index: pd.DataFrame,
    n_folds: int = 5,
    stratify: str | None = "make",
    seed: int = 0,
) -> pd.DataFrame:
    """Assign every image to a fold so that each car's images share one fold.

    ``index`` needs ``id`` and ``car`` columns (plus ``make`` or ``coverage`` when stratifying on
    them; with no make at all, "make" falls back to coverage, else to none, printing one line).
    "area" deals cars sorted by mean coverage in snake order (`area_dealt`); the seed only
    rotates the fold numbers.
    Returns a DataFrame ``id, car, fold`` in the index's order; ``attrs["source"]`` labels the
    split with what it was really stratified by (also ``attrs["stratified_by"]``).
    """
    missing = [c for c in ("id", "car") if c not in index.columns]
    if missing:
        raise ValueError(f"index lacks columns {missing}; it has {list(index.columns)}")
    dup = index["id"][index["id"].duplicated()]
    if len(dup):
        raise ValueError(f"index has duplicate image ids, e.g. {list(dup.unique()[:5])}")
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    n_cars = index["car"].nunique()
    if n_cars < n_folds:
        raise ValueError(
            f"{n_cars} cars ({len(index)} images) cannot fill {n_folds} folds (each car goes to "
            "one fold): use fewer folds or more cars"
        )

    if stratify == "area":
        start = int(np.random.default_rng(seed).integers(n_folds))
        car_fold = area_dealt(_car_coverage(index, "area"), n_folds, start)
        return _assigned(index, car_fold, "area", n_folds, seed)
    strata, used = _car_strata(index, stratify, n_folds)
    rng = np.random.default_rng(seed)
    cars = pd.DataFrame({"car": strata.index, "stratum": strata.to_numpy()})
    cars["order"] = rng.permutation(len(cars))
    # biggest strata first so the rare ones fill the gaps; seeded order inside each stratum
    size = cars.groupby("stratum")["car"].transform("size")
    stratum_rank = rng.permutation(cars["stratum"].nunique())
    rank = dict(zip(sorted(cars["stratum"].unique()), stratum_rank, strict=True))
    cars["srank"] = cars["stratum"].map(rank)
    cars = cars.assign(size=size).sort_values(
        ["size", "srank", "order"], ascending=[False, True, True]
    )
    # rotate fold numbering by seed so fold 0 is not always the largest
    start = int(rng.integers(n_folds))
    car_fold = dict(zip(cars["car"], (np.arange(len(cars)) + start) % n_folds, strict=True))
    return _assigned(index, car_fold, used, n_folds, seed)


def _assigned(
    index: pd.DataFrame, car_fold: dict, used: str, n_folds: int, seed: int
) -> pd.DataFrame:
    """The ``id, car, fold`` frame of a car -> fold map, labelled with its rule."""
    out = index[["id", "car"]].copy().reset_index(drop=True)
    out["fold"] = out["car"].map(car_fold).astype(int)
    out.attrs["stratified_by"] = used
    out.attrs["source"] = f"folds_by_car(n_folds={n_folds}, stratify={used}, seed={seed})"
    return out


def check_folds(folds: pd.DataFrame, source: str = "folds") -> pd.DataFrame:
    """Raise ValueError unless ``folds`` is a valid split: columns id,car,fold, unique ids, integer
    folds, and no car in two folds (the error names the cars)."""
    missing = [c for c in FOLD_COLUMNS if c not in folds.columns]
    if missing:
        raise ValueError(f"{source}: missing columns {missing}; has {list(folds.columns)}")
    fold = pd.to_numeric(folds["fold"], errors="coerce")
    bad = folds.loc[fold.isna() | (fold % 1 != 0), "id"]
    if len(bad):
        raise ValueError(f"{source}: fold must be an integer; bad rows e.g. {list(bad[:5])}")
    if (fold < 0).any():
        raise ValueError(f"{source}: negative fold numbers")
    dup = folds["id"][folds["id"].duplicated()]
    if len(dup):
        raise ValueError(f"{source}: image ids listed twice, e.g. {list(dup.unique()[:5])}")
    per_car = folds.groupby("car")["fold"].nunique()
    leaking = per_car[per_car > 1]
    if len(leaking):
        detail = ", ".join(
            f"{car} in folds {sorted(folds.loc[folds['car'] == car, 'fold'].unique().tolist())}"
            for car in leaking.index[:10]
        )
        more = f" (and {len(leaking) - 10} more)" if len(leaking) > 10 else ""
        raise ValueError(
            f"{source}: {len(leaking)} car(s) appear in more than one fold, "
            f"which would leak validation into training: {detail}{more}"
        )
    return folds


def save_folds(folds: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``id,car,fold`` atomically; refuse a split where a car appears in two folds.

    A split from ``folds_by_car`` also gets a ``stratified_by`` column, so members that read the
    file label their split with what it was really stratified by (``make_split``).
    """
    from kaggle_utils.atomic import atomic_write_text

    path = Path(path)
    check_folds(folds, source=f"refusing to write {path}")
    out = folds[FOLD_COLUMNS].copy()
    out["fold"] = out["fold"].astype(int)
    if "stratified_by" in folds.attrs:
        out["stratified_by"] = folds.attrs["stratified_by"]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, out.to_csv(index=False))
    return path


def load_folds(path: str | os.PathLike) -> pd.DataFrame:
    """Read a folds.csv and validate it the same way ``save_folds`` does; its stratification
    record (if any) comes back as ``attrs["stratified_by"]``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no folds file (run 02_split first)")
    folds = pd.read_csv(path, dtype={"id": str, "car": str})
    check_folds(folds, source=str(path))
    folds["fold"] = folds["fold"].astype(int)
    if "stratified_by" in folds.columns:  # save_folds's record, back into attrs
        kinds = folds.pop("stratified_by").dropna().unique()
        if len(kinds) == 1:
            folds.attrs["stratified_by"] = str(kinds[0])
    return folds


def fold_summary(folds: pd.DataFrame, index: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per fold: images, cars, and (when the index has them) distinct makes and mean coverage."""
    df = folds
    if index is not None:
        extra = [c for c in ("make", "coverage") if c in index.columns]
        df = folds.merge(index[["id", *extra]], on="id", how="left")
    g = df.groupby("fold")
    table = pd.DataFrame({"images": g["id"].size(), "cars": g["car"].nunique()})
    if "make" in df.columns:
        table["makes"] = g["make"].nunique()
    if "coverage" in df.columns:
        table["coverage_mean"] = g["coverage"].mean()
    return table


# ---------------------------------------------------------------- one member's train/val split


def split_by_car(
    index: pd.DataFrame, n_folds: int, fold: int, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(train, val, source) rows: fold `fold` of `n_folds` folds grouped by car (02_split's rule
    when it has not run: no car ever sits on both sides), stratified by make when every car has
    one, else by nothing (said in one line). `source` names the rule and the stratification."""
    make = index["make"] if "make" in index.columns else pd.Series(pd.NA, index=index.index)
    stratify = "make" if make.notna().all() else None
    if stratify is None:
        lacking = index.loc[make.isna(), "car"].nunique()
        _report(
            f"{lacking} of {index['car'].nunique()} cars have no make (metadata.csv): "
            "split_by_car stratifies by nothing instead of make"
        )
    folds = folds_by_car(index, n_folds=n_folds, stratify=stratify, seed=seed)
    fold_of = dict(zip(folds["id"], folds["fold"], strict=True))
    is_val = index["id"].map(fold_of) == fold
    source = (
        f"split_by_car(n_folds={n_folds}, fold={fold}, seed={seed}, "
        f"stratify={folds.attrs['stratified_by']})"
    )
    return index[~is_val].reset_index(drop=True), index[is_val].reset_index(drop=True), source


def make_split(
    index: pd.DataFrame,
    member: MemberConfig,
    fold: int,
    run_dir: str | os.PathLike | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(train, val, source): `<run_dir>/folds.csv` from 02_split when present, else `split_by_car`;
    `source` names the split and what it was stratified by.

    On Kaggle 02 runs in its own kernel: its folds.csv is found under the upstream kernel's output.

    The member's `max_train_images` / `max_val_images` caps keep whole cars where possible
    (a seeded choice of cars, then images) so validation stays car-disjoint.
    """
    from kaggle_utils.environment import find_input

    folds_csv = find_input(Path(run_dir) / "folds.csv") if run_dir else None
    if folds_csv is not None and folds_csv.exists():
        folds = load_folds(folds_csv)
        missing = set(index["id"]) - set(folds["id"])
        if missing:
            raise ValueError(
                f"{folds_csv}: {len(missing)} training images have no fold (e.g. "
                f"{sorted(missing)[:3]}); re-run 02_split for this data"
            )
        if fold not in set(folds["fold"]):
            raise ValueError(
                f"{folds_csv}: no fold {fold}; it has folds {sorted(set(folds['fold']))}"
            )
        fold_of = dict(zip(folds["id"], folds["fold"], strict=True))
        is_val = index["id"].map(fold_of) == fold
        train, val = index[~is_val].reset_index(drop=True), index[is_val].reset_index(drop=True)
        source = _folds_csv_label(folds_csv, folds)
    else:
        train, val, source = split_by_car(index, member.n_folds, fold, seed=member.seed)
    train = _cap(train, member.max_train_images, member.seed)
    val = _cap(val, member.max_val_images, member.seed + 1)
    return train, val, source


def _folds_csv_label(path: Path, folds: pd.DataFrame) -> str:
    """`<path> (stratified by X)` as 02 recorded it; a folds.csv without the record (written by
    hand, or before it was kept) says "unrecorded"."""
    return f"{path} (stratified by {folds.attrs.get('stratified_by', 'unrecorded')})"


def _cap(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """At most `n` rows, taken car by car in a seeded order, so a capped split stays car-disjoint."""
    if n is None or len(df) <= n:
        return df
    rng = np.random.default_rng(seed)
    cars = list(rng.permutation(sorted(df["car"].unique())))
    keep: list[pd.DataFrame] = []
    total = 0
    for car in cars:
        rows = df[df["car"] == car]
        keep.append(rows.iloc[: n - total])
        total += len(keep[-1])
        if total >= n:
            break
    return pd.concat(keep).sort_values("id").reset_index(drop=True)
