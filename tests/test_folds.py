"""Folds grouped by car: no car in two folds, balanced strata, refusal to write a leaking split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kaggle_utils.config import MemberConfig
from kaggle_utils.folds import (
    _cap,
    area_dealt,
    check_folds,
    fold_summary,
    folds_by_car,
    load_folds,
    make_split,
    save_folds,
    split_by_car,
)

MAKES = ["Ford"] * 10 + ["BMW"] * 6 + ["Audi"] * 3 + ["Kia"] * 2 + ["Saab"]


def member(**kw) -> MemberConfig:
    """A two-fold member (only its split fields matter here)."""
    spec = {"name": "tiny", "model": {"arch": "unet", "encoder": "mobilenet_v2"}, "n_folds": 2}
    return MemberConfig.model_validate(
        {**spec, "seed": 3, "stages": [{"size": "64x96", "epochs": 1}], **kw}
    )


def make_index(makes=MAKES, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i, make in enumerate(makes):
        car = f"{i:04x}cafe{i:04x}"
        cov = float(rng.uniform(0.1, 0.4))
        for angle in range(1, 17):
            rows.append((f"{car}_{angle:02d}", car, angle, make, cov + angle * 1e-4))
    return pd.DataFrame(rows, columns=["id", "car", "angle", "make", "coverage"])


@pytest.mark.parametrize("stratify", ["area", "make", "coverage", None])
@pytest.mark.parametrize("n_folds", [2, 5])
def test_every_car_in_one_fold_and_sizes_balanced(stratify, n_folds):
    index = make_index()
    folds = folds_by_car(index, n_folds=n_folds, stratify=stratify, seed=3)
    assert list(folds.columns) == ["id", "car", "fold"]
    assert folds["id"].tolist() == index["id"].tolist()
    assert folds.groupby("car")["fold"].nunique().max() == 1
    assert sorted(folds["fold"].unique()) == list(range(n_folds))
    cars_per_fold = folds.groupby("fold")["car"].nunique()
    assert cars_per_fold.max() - cars_per_fold.min() <= 1
    check_folds(folds)


def test_make_strata_spread_over_folds():
    index = make_index()
    folds = folds_by_car(index, n_folds=5, stratify="make", seed=0).merge(index[["id", "make"]])
    per = pd.crosstab(folds.groupby("car")["fold"].first(), folds.groupby("car")["make"].first())
    # every make's cars differ by at most one between folds (Ford: 2 per fold, BMW: 1-2, ...)
    assert (per.max() - per.min()).max() <= 1
    assert per["Ford"].tolist() == [2] * 5


def test_coverage_strata_balance_mean_coverage():
    index = make_index(["X"] * 40, seed=5)
    by_cov = folds_by_car(index, n_folds=4, stratify="coverage", seed=0).merge(index)
    spread_cov = by_cov.groupby("fold")["coverage"].mean().agg(np.ptp)
    # a plain split of the same cars can put all small cars together; buckets prevent it
    assert spread_cov < 0.03


def test_area_deals_cars_sorted_by_mean_area_in_snake_order():
    """The 1st-place rule: cars by mean mask area, largest first, dealt 0..k-1, k-1..0, ..."""
    area = pd.Series({"a": 0.9, "b": 0.1, "c": 0.5, "d": 0.7, "e": 0.3, "f": 0.2, "g": 0.8})
    assert area_dealt(area, 3) == {"a": 0, "g": 1, "d": 2, "c": 2, "e": 1, "f": 0, "b": 0}
    assert area_dealt(area, 3, start=1)["a"] == 1  # the seed only renumbers the folds
    index = make_index()
    by_area = folds_by_car(index, n_folds=5, stratify="area", seed=0)
    assert by_area.attrs["stratified_by"] == "area"
    again = folds_by_car(index, n_folds=5, stratify="area", seed=4)
    groups = [set(f.groupby("fold")["car"].agg(frozenset)) for f in (by_area, again)]
    assert groups[0] == groups[1]  # the same cars together whatever the seed
    with pytest.raises(ValueError, match="stratify='area' needs a 'coverage' column"):
        folds_by_car(index.drop(columns="coverage"), stratify="area")


def _fold_area_spread(index: pd.DataFrame, stratify, n_folds: int, seed: int) -> float:
    split = folds_by_car(index, n_folds=n_folds, stratify=stratify, seed=seed)
    return float(
        split.merge(index[["id", "coverage"]]).groupby("fold")["coverage"].mean().agg(np.ptp)
    )


def test_area_balances_fold_mean_areas_better_than_the_other_rules(real_sample):
    """On the real sample's 48 cars (12 per fold of 4): the fold mean mask areas differ by less
    with `area` than with any seed of `coverage` buckets, `make` or no stratification."""
    from kaggle_utils.eda import with_coverage
    from kaggle_utils.index import train_index
    from kaggle_utils.layout import find_data

    data = find_data(real_sample)
    index = with_coverage(data, train_index(data))
    area = _fold_area_spread(index, "area", 4, 0)
    others = [
        _fold_area_spread(index, s, 4, seed)
        for s in ("coverage", "make", None)
        for seed in range(3)
    ]
    assert area < 0.006 and area < min(others)


def test_area_balances_fold_mean_areas_on_synthetic_cars():
    """40 cars of uniform random area: `area` is deterministic and beats shuffled buckets on
    average over seeds (a lucky seed of buckets can do better) and every unstratified seed."""
    index = make_index(["X"] * 40, seed=5)
    area = _fold_area_spread(index, "area", 4, 0)
    buckets = [_fold_area_spread(index, "coverage", 4, s) for s in range(6)]
    plain = [_fold_area_spread(index, None, 4, s) for s in range(6)]
    assert area < 0.01 and area < np.mean(buckets) and area < min(plain)


def test_seed_changes_assignment_and_is_deterministic():
    index = make_index()
    a = folds_by_car(index, n_folds=5, seed=0)
    assert a.equals(folds_by_car(index, n_folds=5, seed=0))
    assert not a["fold"].equals(folds_by_car(index, n_folds=5, seed=1)["fold"])


def test_bad_inputs_are_named():
    index = make_index()
    with pytest.raises(ValueError, match="stratify must be one of"):
        folds_by_car(index, stratify="year")
    with pytest.raises(ValueError, match=r"22 cars \(352 images\) cannot fill 30 folds"):
        folds_by_car(index, n_folds=30)
    with pytest.raises(ValueError, match="'coverage' column"):
        folds_by_car(index.drop(columns="coverage"), stratify="coverage")
    with pytest.raises(ValueError, match="lacks columns"):
        folds_by_car(index.drop(columns="car"))
    with pytest.raises(ValueError, match="duplicate image ids"):
        folds_by_car(pd.concat([index, index.iloc[:1]]))


def test_missing_make_is_its_own_stratum():
    index = make_index()
    index.loc[index["car"] == index["car"].iloc[0], "make"] = np.nan
    folds = folds_by_car(index, n_folds=3, stratify="make")
    assert folds.groupby("car")["fold"].nunique().max() == 1


def test_save_refuses_a_car_in_two_folds(tmp_path):
    folds = folds_by_car(make_index(), n_folds=5)
    leak = folds.copy()
    car = leak["car"].iloc[0]
    first = leak.index[leak["car"] == car][0]
    leak.loc[first, "fold"] = (leak.loc[first, "fold"] + 1) % 5
    path = tmp_path / "run" / "folds.csv"
    with pytest.raises(ValueError, match=f"refusing to write .*{car} in folds"):
        save_folds(leak, path)
    assert not path.exists()

    save_folds(folds, path)
    back = load_folds(path)
    assert back.equals(folds)
    assert [p.name for p in path.parent.iterdir()] == ["folds.csv"]  # no temp file left behind


def test_load_validates_file(tmp_path):
    path = tmp_path / "folds.csv"
    path.write_text("id,car,fold\na_01,a,0\na_02,a,1\nb_01,b,1\n")
    with pytest.raises(ValueError, match=r"folds\.csv: 1 car\(s\) .* a in folds \[0, 1\]"):
        load_folds(path)
    path.write_text("id,car\na_01,a\n")
    with pytest.raises(ValueError, match="missing columns \\['fold'\\]"):
        load_folds(path)
    path.write_text("id,car,fold\na_01,a,x\n")
    with pytest.raises(ValueError, match="fold must be an integer; bad rows e.g. \\['a_01'\\]"):
        load_folds(path)
    path.write_text("id,car,fold\na_01,a,0\na_01,a,0\n")
    with pytest.raises(ValueError, match="listed twice"):
        load_folds(path)
    with pytest.raises(FileNotFoundError, match="run 02_split"):
        load_folds(tmp_path / "nope.csv")


def test_fold_summary_counts():
    index = make_index()
    folds = folds_by_car(index, n_folds=2, stratify="make")
    table = fold_summary(folds, index)
    assert table["images"].sum() == len(index)
    assert table["cars"].sum() == index["car"].nunique()
    assert set(table.columns) == {"images", "cars", "makes", "coverage_mean"}


# ---------------------------------------------------------------- one member's split


def test_split_by_car_is_disjoint(small_synthetic):
    from kaggle_utils.index import train_index
    from kaggle_utils.layout import find_data

    index = train_index(find_data(small_synthetic))
    seen = []
    for fold in range(2):
        train, val, source = split_by_car(index, 2, fold, seed=0)
        assert source == f"split_by_car(n_folds=2, fold={fold}, seed=0, stratify=make)"
        assert not set(train["car"]) & set(val["car"])
        assert len(train) + len(val) == len(index)
        seen += list(val["id"])
    assert sorted(seen) == sorted(index["id"])


def test_without_folds_csv_the_split_is_split_by_car_then_capped_by_car(tmp_path):
    index = make_index()
    train, val, source = make_split(
        index, member(max_train_images=40, max_val_images=20), 1, tmp_path
    )
    assert source == "split_by_car(n_folds=2, fold=1, seed=3, stratify=make)"
    assert (len(train), len(val)) == (40, 20)
    assert not set(train["car"]) & set(val["car"])
    assert val["car"].value_counts().max() == 16  # whole cars first, then part of the next one
    full_train, full_val, _ = split_by_car(index, 2, 1, seed=3)
    assert set(train["id"]) <= set(full_train["id"]) and set(val["id"]) <= set(full_val["id"])


def test_cap_is_seeded_and_keeps_what_fits():
    index = make_index()
    assert _cap(index, None, 0) is index and _cap(index, len(index), 0) is index
    capped = _cap(index, 33, 5)
    assert len(capped) == 33 and capped["car"].nunique() == 3
    assert capped.equals(_cap(index, 33, 5)) and not capped.equals(_cap(index, 33, 6))
    assert list(capped["id"]) == sorted(capped["id"])


def test_folds_csv_from_02_wins(small_synthetic, tmp_path):
    from kaggle_utils.index import train_index
    from kaggle_utils.layout import find_data

    index = train_index(find_data(small_synthetic))
    cars = sorted(index["car"].unique())
    folds = index[["id", "car"]].assign(fold=index["car"].map({c: int(c == cars[0]) for c in cars}))
    folds.to_csv(tmp_path / "folds.csv", index=False)
    train, val, source = make_split(index, member(), 1, tmp_path)
    assert source == f"{tmp_path / 'folds.csv'} (stratified by unrecorded)"
    assert set(val["car"]) == {cars[0]}
    assert cars[0] not in set(train["car"])
    with pytest.raises(ValueError, match="no fold 2"):
        make_split(index, member(n_folds=3), 2, tmp_path)
    folds.iloc[1:].to_csv(tmp_path / "folds.csv", index=False)
    with pytest.raises(ValueError, match="1 training images have no fold.*re-run 02_split"):
        make_split(index, member(), 1, tmp_path)


def test_folds_csv_from_an_upstream_kaggle_kernel_is_used(small_synthetic, tmp_path, monkeypatch):
    """On Kaggle 02_split runs in its own kernel; members must read its folds.csv, not re-split."""
    from kaggle_utils import environment
    from kaggle_utils.index import train_index
    from kaggle_utils.layout import find_data

    inp, work = tmp_path / "input", tmp_path / "working"
    work.mkdir()
    monkeypatch.setattr(environment, "KAGGLE_INPUT", inp)
    monkeypatch.setattr(environment, "KAGGLE_WORKING", work)
    index = train_index(find_data(small_synthetic))
    cars = sorted(index["car"].unique())
    folds = index[["id", "car"]].assign(
        fold=index["car"].map({c: int(c == cars[-1]) for c in cars})
    )
    upstream = inp / "carvana-demo-02-split" / "runs" / "demo"
    upstream.mkdir(parents=True)
    folds.to_csv(upstream / "folds.csv", index=False)
    train, val, source = make_split(index, member(), 1, "runs/demo")
    assert source == f"{upstream / 'folds.csv'} (stratified by unrecorded)"
    assert set(val["car"]) == {cars[-1]} and cars[-1] not in set(train["car"])


def test_the_split_label_says_what_it_was_stratified_by(tmp_path, capsys):
    """A split that could not stratify by make says so in a line and in its label (issue 18)."""
    index = make_index()
    folds = folds_by_car(index, n_folds=3, stratify="make")
    assert folds.attrs["source"] == "folds_by_car(n_folds=3, stratify=make, seed=0)"
    save_folds(folds, tmp_path / "folds.csv")
    _, _, source = make_split(index, member(), 1, tmp_path)
    assert source == f"{tmp_path / 'folds.csv'} (stratified by make)"
    no_make = index.assign(make=pd.NA)
    by_cov = folds_by_car(no_make, n_folds=3, stratify="make")
    assert by_cov.attrs["stratified_by"] == "coverage (no make)"
    assert "folds stratified by coverage instead" in capsys.readouterr().out
    unstrat = folds_by_car(no_make.drop(columns="coverage"), n_folds=3, stratify="make")
    assert unstrat.attrs["stratified_by"] == "none (no make)"
    assert not by_cov["fold"].equals(folds["fold"])  # a different split, a different label
    _, _, source = split_by_car(no_make, 2, 0, seed=3)
    assert source == "split_by_car(n_folds=2, fold=0, seed=3, stratify=none)"
    assert "22 of 22 cars have no make" in capsys.readouterr().out
