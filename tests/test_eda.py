"""EDA tables and figures: the numbers are right and the figures draw on synthetic and real data."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
from _tiny_run import make_run
from matplotlib.figure import Figure

from kaggle_utils import eda, eda_plots
from kaggle_utils import index as index_mod
from kaggle_utils.folds import folds_by_car
from kaggle_utils.index import train_index
from kaggle_utils.layout import find_data
from kaggle_utils.rle import rle_encode


@pytest.fixture(scope="module")
def synth(small_synthetic):
    data = find_data(small_synthetic)
    return data, train_index(data), index_mod.test_index(data)


def test_rle_area_is_mask_pixels():
    rng = np.random.default_rng(0)
    mask = (rng.random((37, 53)) > 0.6).astype(np.uint8)
    assert eda.rle_area(rle_encode(mask)) == int(mask.sum())
    assert eda.rle_area("") == 0 and eda.rle_area(float("nan")) == 0


def test_with_coverage_matches_the_masks(synth):
    data, train, _ = synth
    cov = eda.with_coverage(data, train)
    assert len(cov) == len(train) and cov["coverage"].between(0, 1).all()
    for image_id in train["id"].iloc[[0, 7, -1]]:
        expect = data.load_mask(image_id).mean()
        got = cov.loc[cov["id"] == image_id, "coverage"].item()
        assert got == pytest.approx(expect, abs=1e-9)


def test_data_checks_pass_on_synthetic(synth):
    data, train, test = synth
    table = eda.data_checks(data, train, test, sample_size=1)
    checks = dict(zip(table["check"], table["value"], strict=True))
    assert checks["train images"] == len(train) == 4 * 16
    assert checks["train cars"] == 4
    assert checks["cars with all 16 angles"] == "4/4"
    assert checks["test images"] == len(test)
    assert checks["mask size (HxW)"] == "160x240"
    assert table["ok"].dtype == bool and table["ok"].all(), table  # a real verdict on every row
    assert list(table.columns) == ["check", "value", "ok", "note"]
    assert table.set_index("check").loc["train_hq present", "note"].startswith("optional")


def test_data_checks_flag_a_missing_angle(synth):
    data, train, test = synth
    gap = train[~((train["car"] == train["car"].iloc[0]) & (train["angle"] == 7))]
    table = eda.data_checks(data, gap, test, sample_size=1).set_index("check")
    assert table.loc["cars with all 16 angles", "value"] == "3/4"
    assert not table.loc["cars with all 16 angles", "ok"]
    assert train["car"].iloc[0] in table.loc["cars missing angles", "value"]


def test_sample_cars_keeps_whole_cars(synth):
    _, train, _ = synth
    s = eda.sample_cars(train, 2, seed=1)
    assert s["car"].nunique() == 2 and len(s) == 32
    assert eda.sample_cars(train, None).equals(train.reset_index(drop=True))
    with pytest.raises(ValueError, match="sample_size"):
        eda.sample_cars(train, 0)


def _shape(thin: bool, fg: int) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((128, 192), np.uint8)
    mask[40:90, 50:140] = 1
    if thin:
        mask[10:40, 95:97] = 1  # an antenna
    image = np.full((128, 192, 3), 200, np.uint8)
    image[mask > 0] = fg
    return image, mask


def test_mask_difficulty_sees_thin_parts_and_low_contrast():
    easy = eda.mask_difficulty(*_shape(thin=False, fg=20))
    antenna = eda.mask_difficulty(*_shape(thin=True, fg=20))
    camouflage = eda.mask_difficulty(*_shape(thin=False, fg=190))
    # an elliptic opening only nibbles a rectangle's corners; it removes the whole antenna
    assert easy["thin_frac"] < 0.002 and antenna["thin_frac"] > 0.01
    assert antenna["boundary_frac"] > easy["boundary_frac"]
    assert easy["edge_contrast"] == pytest.approx(180 / 255, abs=0.02)
    assert camouflage["edge_contrast"] < 0.1 * easy["edge_contrast"]
    assert eda.mask_difficulty(*_shape(False, 20))["edge_contrast"] == easy["edge_contrast"]


def test_overlay_modes():
    image, mask = _shape(thin=False, fg=20)
    fill = eda.overlay_mask(image, mask, alpha=1.0, mode="fill", color=(255, 0, 0))
    assert (fill[mask > 0] == (255, 0, 0)).all() and (fill[mask == 0] == image[mask == 0]).all()
    line = eda.overlay_mask(image, mask, alpha=1.0, mode="outline", color=(255, 0, 0), thickness=1)
    drawn = (line != image).any(axis=2)
    assert drawn.sum() == 2 * (50 + 90) - 4  # the rectangle's one-pixel outline
    with pytest.raises(ValueError, match="mode"):
        eda.overlay_mask(image, mask, mode="glow")


def _drawn(fig: Figure) -> int:
    fig.canvas.draw()
    return len([ax for ax in fig.axes if ax.has_data()])


def test_figures_draw_on_synthetic(synth):
    data, train, _ = synth
    train = eda.with_coverage(data, train)
    assert _drawn(eda_plots.plot_metadata(train)) == 3
    assert _drawn(eda_plots.plot_coverage(train)) == 2
    diff = eda.angle_difficulty(data, eda.sample_cars(train, 1), size=(80, 120))
    assert len(diff) == 16 and set(diff["angle"]) == set(range(1, 17))
    assert _drawn(eda_plots.plot_angle_difficulty(diff)) == 3
    grid = eda_plots.plot_sample_grid(data, train, n=5, size=(40, 60), cols=3)
    assert _drawn(grid) == 5
    folds = folds_by_car(train, n_folds=2, stratify="coverage")
    assert _drawn(eda_plots.plot_fold_balance(folds, train)) == 3
    with pytest.raises(ValueError, match="with_coverage"):
        eda_plots.plot_coverage(train.drop(columns="coverage"))


def test_metadata_plot_without_metadata(synth):
    _, train, _ = synth
    bare = train.assign(make=pd.NA, year=pd.NA, model=pd.NA)
    assert _drawn(eda_plots.plot_metadata(bare)) == 0


def test_real_sample_checks_and_coverage(real_sample):
    data = find_data(real_sample)
    train = train_index(data)
    table = eda.data_checks(data, train, index_mod.test_index(data), sample_size=1).set_index(
        "check"
    )
    assert table.loc["cars with all 16 angles", "value"] == "48/48"
    assert table.loc["image sizes (16 sampled)", "value"] == {"1918x1280": 16}
    assert table.loc["mask size (HxW)", "ok"]
    cov = eda.with_coverage(data, train.iloc[:16])
    one = data.load_mask(train["id"].iloc[3])
    assert cov["coverage"].iloc[3] == pytest.approx(one.mean(), abs=1e-9)
    assert cv2.countNonZero(one) > 0


def _whole_ticks(ax) -> bool:
    lo, hi = ax.get_ylim()
    ticks = [t for t in ax.get_yticks() if lo <= t <= hi]
    return bool(ticks) and all(float(t).is_integer() for t in ticks)


def test_count_plots_have_whole_number_ticks(synth):
    """Two or four cars: the count axes show 0, 1, 2 ... never half a car."""
    data, train, _ = synth
    train = eda.with_coverage(data, train)
    fig = eda_plots.plot_metadata(train)
    fig.canvas.draw()
    counted = [ax for ax in fig.axes if ax.has_data()]
    assert counted and all(_whole_ticks(ax) for ax in counted)
    folds = folds_by_car(train, n_folds=2, stratify="coverage")
    fig = eda_plots.plot_fold_balance(folds, train)
    fig.canvas.draw()
    assert _whole_ticks(fig.axes[0]) and _whole_ticks(fig.axes[1])


def test_difficulty_error_bars_never_go_below_zero():
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {
            "car": np.repeat(["a", "b", "c"], 16),
            "angle": np.tile(np.arange(1, 17), 3),
            # a skewed, mostly-zero share: its std exceeds its mean at most angles
            "thin_frac": rng.exponential(0.0002, 48) * (rng.random(48) < 0.4),
            "boundary_frac": rng.uniform(0.02, 0.04, 48),
            "edge_contrast": rng.uniform(0.0, 0.2, 48),
        }
    )
    fig = eda_plots.plot_angle_difficulty(table)
    fig.canvas.draw()
    for ax in fig.axes:
        assert ax.get_ylim()[0] == 0
        from matplotlib.container import ErrorbarContainer

        (bars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        lows = [seg[:, 1].min() for seg in bars.lines[2][0].get_segments()]
        assert min(lows) >= 0, lows


@pytest.fixture()
def run_dir(synth, tmp_path):
    data, _, _ = synth
    make_run(data, tmp_path / "run", n_val_cars=2)
    return tmp_path / "run"


def test_measured_angle_dice_from_the_run_folder(synth, run_dir):
    data, train, _ = synth
    oof = eda_plots.read_oof_dice(run_dir)
    assert list(oof.columns) == eda_plots.OOF_COLUMNS
    assert set(oof["source"]) == {"alpha/s1_64x96", "beta/s1_96x128"}
    assert set(oof["angle"]) == set(range(1, 17))  # from the ids where oof.csv has no angle
    diff = eda.angle_difficulty(data, eda.sample_cars(train, 1), size=(80, 120))
    ranking = eda_plots.angle_ranking(diff, oof, n=3)
    measured = ranking.iloc[0]
    assert measured["measure"].startswith("measured") and measured["shared with measured"] == 3
    per_angle = oof.groupby("angle")["dice"].mean()
    worst = ", ".join(f"{a:02d}" for a in per_angle.nsmallest(3).index)
    assert measured["hardest 3 angles"] == worst
    assert len(ranking) == 4 and ranking["rank correlation with measured"].iloc[0] == 1.0
    fig = eda_plots.measured_angle_difficulty(diff, run_dir)
    assert isinstance(fig, Figure)
    fig.canvas.draw()
    bars = fig.axes[0].patches
    assert len(bars) == 16
    red = {i + 1 for i, b in enumerate(bars) if b.get_facecolor()[0] > 0.8}
    assert red == set(per_angle.nsmallest(3).index)


def test_measured_angle_dice_before_any_training(synth, tmp_path):
    data, train, _ = synth
    diff = eda.angle_difficulty(data, eda.sample_cars(train, 1), size=(80, 120))
    note = eda_plots.measured_angle_difficulty(diff, tmp_path / "empty-run")
    assert "No measured Dice yet" in note.data and str(tmp_path / "empty-run") in note.data
    assert "make demo" in note.data


def test_final_stages_keep_each_members_last_stage():
    oof = pd.DataFrame(
        {
            "source": ["m/s1_64x96", "m/s2_96x128", "m/fold1/s1_64x96", "n/s1_64x96"],
            "id": ["a_01"] * 4,
            "angle": [1] * 4,
            "dice": [0.9, 0.95, 0.9, 0.8],
        }
    )
    assert set(eda_plots.final_stages(oof)["source"]) == {
        "m/s2_96x128",
        "m/fold1/s1_64x96",
        "n/s1_64x96",
    }
