"""Folds grouped by car: no car in two folds, balanced strata, refusal to write a leaking split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kaggle_utils.folds import check_folds, fold_summary, folds_by_car, load_folds, save_folds

MAKES = ["Ford"] * 10 + ["BMW"] * 6 + ["Audi"] * 3 + ["Kia"] * 2 + ["Saab"]


def make_index(makes=MAKES, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i, make in enumerate(makes):
        car = f"{i:04x}cafe{i:04x}"
        cov = float(rng.uniform(0.1, 0.4))
        for angle in range(1, 17):
            rows.append((f"{car}_{angle:02d}", car, angle, make, cov + angle * 1e-4))
    return pd.DataFrame(rows, columns=["id", "car", "angle", "make", "coverage"])


@pytest.mark.parametrize("stratify", ["make", "coverage", None])
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


def test_seed_changes_assignment_and_is_deterministic():
    index = make_index()
    a = folds_by_car(index, n_folds=5, seed=0)
    assert a.equals(folds_by_car(index, n_folds=5, seed=0))
    assert not a["fold"].equals(folds_by_car(index, n_folds=5, seed=1)["fold"])


def test_bad_inputs_are_named():
    index = make_index()
    with pytest.raises(ValueError, match="stratify must be one of"):
        folds_by_car(index, stratify="year")
    with pytest.raises(ValueError, match="22 cars cannot fill 30 folds"):
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
