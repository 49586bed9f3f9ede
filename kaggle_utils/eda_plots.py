"""Figures for the EDA and split notebooks (01_eda, 02_split), and 01's measured check of its
difficulty heuristics.

Each figure function takes ``eda``'s tables (index DataFrames, ``angle_difficulty``) or the data
layer's objects and returns a matplotlib ``Figure``. ``read_oof_dice`` / ``final_stages`` /
``angle_ranking`` / ``measured_angle_difficulty`` put the per-image OOF Dice that 03 writes beside
the heuristics, so 01 shows how far they can be trusted.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kaggle_utils.eda import DIFFICULTY_MEASURES, _resize_mask, overlay_mask


# ---------------------------------------------------------------------------------------- metadata
def _per_car(index: pd.DataFrame) -> pd.DataFrame:
    return index.groupby("car", sort=True).first()


def plot_metadata(index: pd.DataFrame, top_n: int = 15) -> Figure:
    """Bar charts of cars per make, year and model (top ``top_n`` each)."""
    cars = _per_car(index)
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, col in zip(axes, ("make", "year", "model"), strict=True):
        if col not in cars.columns or cars[col].notna().sum() == 0:
            ax.text(0.5, 0.5, f"no '{col}' in metadata", ha="center", va="center")
            ax.set_axis_off()
            continue
        values = cars[col].dropna()
        if col == "model" and "make" in cars.columns:
            values = (cars["make"].fillna("") + " " + cars[col].astype(str)).loc[values.index]
        if col == "year":
            values = values.astype(int)
        counts = values.astype(str).value_counts().head(top_n)
        if col == "year":
            counts = counts.sort_index()
        ax.bar(counts.index, counts.to_numpy(), color="tab:blue")
        ax.set_title(f"cars per {col} (top {len(counts)} of {values.nunique()})")
        ax.tick_params(axis="x", labelrotation=70, labelsize=8)
        ax.set_ylabel("cars")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # no half cars
    fig.suptitle(f"metadata of {len(cars)} cars")
    return fig


def _boxplot(ax, groups: list, labels: list) -> None:
    """Box plot with tick labels on any matplotlib >= 3.7 (Kaggle's images lag behind)."""
    ax.boxplot(groups)
    ax.set_xticks(range(1, len(labels) + 1), [str(x) for x in labels])


def plot_coverage(index: pd.DataFrame, top_n: int = 15) -> Figure:
    """Mask coverage (car fraction of the image) by angle (box plot) and by make (mean, top-N)."""
    if "coverage" not in index.columns:
        raise ValueError("plot_coverage needs a 'coverage' column: use with_coverage(data, index)")
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1, 1.2])
    angles = sorted(index["angle"].unique())
    _boxplot(ax1, [index.loc[index["angle"] == a, "coverage"] for a in angles], angles)
    ax1.set_xlabel("angle")
    ax1.set_ylabel("car fraction of image")
    ax1.set_title("mask coverage by angle")
    if "make" in index.columns and index["make"].notna().any():
        by_make = index.groupby("make")["coverage"].agg(["mean", "std", "size"])
        by_make = by_make.sort_values("size", ascending=False).head(top_n).sort_values("mean")
        ax2.barh(by_make.index.astype(str), by_make["mean"], xerr=by_make["std"].fillna(0))
        ax2.set_xlabel("mean car fraction")
        ax2.set_title(f"mask coverage by make (top {len(by_make)} makes by images)")
        ax2.tick_params(axis="y", labelsize=8)
    else:
        ax2.text(0.5, 0.5, "no make in metadata", ha="center", va="center")
        ax2.set_axis_off()
    return fig


# ------------------------------------------------------------------------------------- difficulty
def _spread(mean: pd.Series, std: pd.Series) -> np.ndarray:
    """Asymmetric error bars (2, n) of mean +- std, the lower arm cut at 0: the measures are
    fractions and contrasts that cannot be negative."""
    return np.vstack([np.minimum(std.to_numpy(), mean.to_numpy()), std.to_numpy()])


def plot_angle_difficulty(table: pd.DataFrame, highlight: int = 3) -> Figure:
    """Per angle mean (and std, cut at 0) of each difficulty measure; the ``highlight`` hardest
    angles in red."""
    measures = DIFFICULTY_MEASURES
    stats = table.groupby("angle")[[m for m, _, _ in measures]].agg(["mean", "std"])
    fig = Figure(figsize=(15, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, (col, title, low_is_hard) in zip(axes, measures, strict=True):
        mean, std = stats[(col, "mean")], stats[(col, "std")].fillna(0)
        order = mean.sort_values(ascending=low_is_hard).index[:highlight]
        colors = ["tab:red" if a in set(order) else "tab:gray" for a in mean.index]
        ax.bar(mean.index.astype(str), mean.to_numpy(), yerr=_spread(mean, std), color=colors)
        ax.set_ylim(bottom=0)
        ax.set_title(title)
        ax.set_xlabel("angle")
    fig.suptitle(f"which angles are hardest ({table['car'].nunique()} cars; red = hardest)")
    return fig


# ------------------------------------------------------------------ measured difficulty (OOF Dice)
OOF_COLUMNS = ["source", "id", "angle", "dice"]


def read_oof_dice(run_dir: str | os.PathLike) -> pd.DataFrame:
    """Per-image OOF Dice of every trained stage under ``run_dir``: the ``oof.csv`` of each
    ``<member>[/fold<k>]/<stage>/`` (what 03 writes), as columns source ("member/stage"), id,
    angle, dice. Empty when nothing has trained yet. A relative ``run_dir`` is resolved as the
    notebooks resolve it (environment.resolve_run_dir: the project root, or /kaggle/working)."""
    from kaggle_utils.environment import resolve_run_dir

    root = resolve_run_dir(run_dir)
    files = sorted({*root.glob("*/*/oof.csv"), *root.glob("*/fold*/*/oof.csv")})
    frames = []
    for path in files:
        df = pd.read_csv(path)
        if not {"id", "dice"} <= set(df.columns):
            raise ValueError(f"{path}: needs columns id and dice, has {list(df.columns)}")
        angle = df["angle"] if "angle" in df.columns else df["id"].astype(str).str[-2:]
        source = path.parent.relative_to(root).as_posix()
        frames.append(
            pd.DataFrame(
                {"source": source, "id": df["id"], "angle": angle.astype(int), "dice": df["dice"]}
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=OOF_COLUMNS)


def final_stages(oof: pd.DataFrame) -> pd.DataFrame:
    """The rows of each member's last stage (highest resolution, best trained): the earlier
    stages score the same validation cars, only worse."""
    if oof.empty:
        return oof
    member = oof["source"].str.rsplit("/", n=1).str[0]
    last = oof.groupby(member)["source"].transform("max")
    return oof[oof["source"] == last].reset_index(drop=True)


def angle_ranking(difficulty: pd.DataFrame, oof: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """Each heuristic beside the measurement: its ``n`` hardest angles, how many of them the
    measured ``n`` worst angles (lowest mean OOF Dice of the final stages) share, and the rank
    correlation of its per-angle scores with the measured error over all angles."""
    measured = 1 - final_stages(oof).groupby("angle")["dice"].mean()  # error: high is hard
    scores = {"measured: OOF 1 - Dice": measured}
    for col, title, low_is_hard in DIFFICULTY_MEASURES:
        mean = difficulty.groupby("angle")[col].mean()
        scores[f"heuristic: {title}"] = -mean if low_is_hard else mean
    worst = set(measured.nlargest(n).index)
    rows = []
    for name, score in scores.items():
        hardest = list(score.nlargest(n).index)
        both = score.index.intersection(measured.index)
        rho = score[both].rank().corr(measured[both].rank()) if len(both) > 2 else float("nan")
        rows.append(
            {
                "measure": name,
                f"hardest {n} angles": ", ".join(f"{a:02d}" for a in hardest),
                "shared with measured": len(worst & set(hardest)),
                "rank correlation with measured": round(float(rho), 3),
            }
        )
    return pd.DataFrame(rows)


def plot_measured_angle_dice(difficulty: pd.DataFrame, oof: pd.DataFrame, n: int = 3) -> Figure:
    """Measured mean OOF Dice per angle (worst ``n`` red), and each heuristic's ranking next to
    the measured one: trust the heuristics only as far as they agree with it."""
    final = final_stages(oof)
    by = final.groupby("angle")["dice"].agg(["mean", "min", "size"])
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    ax, ax_rank = fig.subplots(1, 2, width_ratios=[1, 1.1])
    worst = set(by["mean"].nsmallest(n).index)
    colors = ["tab:red" if a in worst else "tab:blue" for a in by.index]
    ax.bar(by.index.astype(str), by["mean"], color=colors)
    lo = float(by["mean"].min())
    ax.set_ylim(max(0.0, lo - 2 * (1 - lo) - 0.002), 1.0)
    ax.set(xlabel="angle", ylabel="mean OOF Dice")
    sources = ", ".join(sorted(final["source"].unique()))
    ax.set_title(f"measured: OOF Dice by angle ({sources}; red = worst {n})", fontsize=9)
    table = angle_ranking(difficulty, oof, n)
    _draw_ranking(ax_rank, table, n)
    fig.suptitle(
        f"which angles are hardest: measured on {final['id'].nunique()} held-out images vs the "
        "heuristics above"
    )
    return fig


def _draw_ranking(ax, table: pd.DataFrame, n: int) -> None:
    """The ranking table as text: one row per measure, the heuristics' agreement with the
    measurement in the last columns."""
    ax.set_axis_off()
    cells = table.astype(str).to_numpy().tolist()
    shown = ax.table(cellText=cells, colLabels=list(table.columns), loc="center", cellLoc="left")
    shown.auto_set_font_size(False)
    shown.set_fontsize(9)
    shown.scale(1, 1.6)
    shown.auto_set_column_width(list(range(len(table.columns))))
    for col in range(len(table.columns)):
        shown[1, col].set_facecolor("#dbe8f6")  # the measured row
    ax.set_title(f"hardest {n} angles by each measure (measured first)", fontsize=9)


def measured_angle_difficulty(difficulty: pd.DataFrame, run_dir: str | os.PathLike) -> object:
    """01's check of its own heuristics: once a member has trained, the measured OOF Dice by angle
    beside them (a Figure); before that, a note saying how to get one (IPython Markdown)."""
    from IPython.display import Markdown

    from kaggle_utils.environment import resolve_run_dir

    oof = read_oof_dice(run_dir)
    if oof.empty:
        where = resolve_run_dir(run_dir)
        return Markdown(
            f"**No measured Dice yet**: no `<member>/<stage>/oof.csv` under `{where.absolute()}`. "
            "Train a member (`make demo`, or 03_train_member with the same `run_dir`) and re-run "
            "this cell. Until then the heuristics above are guesses: on real held-out cars the "
            "measured worst angles (01 and 09) are not the ones they name."
        )
    return plot_measured_angle_dice(difficulty, oof)


# --------------------------------------------------------------------------------------- drawing
def plot_sample_grid(
    data,
    index: pd.DataFrame,
    n: int = 8,
    size: tuple[int, int] = (320, 480),
    cols: int = 4,
    seed: int = 0,
) -> Figure:
    """A grid of ``n`` random train images with their mask outlines."""
    rng = np.random.default_rng(seed)
    pick = index.iloc[np.sort(rng.choice(len(index), size=min(n, len(index)), replace=False))]
    rows = max(1, math.ceil(len(pick) / cols))
    fig = Figure(figsize=(4 * cols, 2.8 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, row in zip(axes, pick.itertuples(index=False), strict=False):
        image = data.load_image(row.id, size=size)
        mask = _resize_mask(data.load_mask(row.id), size)
        ax.imshow(overlay_mask(image, mask, alpha=1.0, mode="outline", color=(0, 255, 0)))
        make = getattr(row, "make", None)
        ax.set_title(f"{row.id}" + (f" ({make})" if isinstance(make, str) else ""), fontsize=9)
    return fig


# ------------------------------------------------------------------------------------ fold balance
def plot_fold_balance(folds: pd.DataFrame, index: pd.DataFrame, top_n: int = 10) -> Figure:
    """Fold balance: images per fold, cars per fold by make (top makes), coverage per fold."""
    df = folds.merge(index.drop(columns=["car"], errors="ignore"), on="id", how="left")
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3)
    counts = df.groupby("fold")["id"].size()
    ax1.bar(counts.index.astype(str), counts.to_numpy(), color="tab:blue")
    ax1.set_title("images per fold")
    ax1.set_xlabel("fold")
    ax1.yaxis.set_major_locator(MaxNLocator(integer=True))
    if "make" in df.columns and df["make"].notna().any():
        cars = df.groupby("car").first()
        top = cars["make"].value_counts().head(top_n).index
        make = cars["make"].where(cars["make"].isin(top), "other").fillna("unknown")
        table = pd.crosstab(cars["fold"], make)
        bottom = np.zeros(len(table))
        for m in table.columns:
            ax2.bar(table.index.astype(str), table[m].to_numpy(), bottom=bottom, label=str(m))
            bottom += table[m].to_numpy()
        ax2.legend(fontsize=7, ncol=2)
        ax2.set_title("cars per fold by make")
        ax2.set_xlabel("fold")
        ax2.yaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        ax2.text(0.5, 0.5, "no make in metadata", ha="center", va="center")
        ax2.set_axis_off()
    if "coverage" in df.columns and df["coverage"].notna().any():
        fold_ids = sorted(df["fold"].unique())
        _boxplot(ax3, [df.loc[df["fold"] == f, "coverage"] for f in fold_ids], fold_ids)
        ax3.set_title("mask coverage per fold")
        ax3.set_xlabel("fold")
    else:
        ax3.text(0.5, 0.5, "no coverage column", ha="center", va="center")
        ax3.set_axis_off()
    return fig
