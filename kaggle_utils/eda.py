"""Tables and figures for the EDA and split notebooks (01_eda, 02_split).

Every function takes the data layer's objects (``CompetitionData`` and index DataFrames) and returns
a pandas table or a matplotlib ``Figure``, so notebooks stay one call per cell and tests can check
the numbers. Per-image pixel work is done on a sample of cars (``sample_cars``) so the same cells
run on the full competition data in minutes.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence

import cv2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

N_ANGLES = 16


# ---------------------------------------------------------------------------------------- sampling
def sample_cars(index: pd.DataFrame, sample_size: int | None, seed: int = 0) -> pd.DataFrame:
    """All images of ``sample_size`` randomly chosen cars (every car when None or larger)."""
    cars = sorted(index["car"].unique())
    if sample_size is None or sample_size >= len(cars):
        return index.reset_index(drop=True)
    if sample_size < 1:
        raise ValueError(
            f"sample_size must be a positive number of cars or None, got {sample_size}"
        )
    rng = np.random.default_rng(seed)
    keep = set(rng.choice(cars, size=sample_size, replace=False).tolist())
    return index[index["car"].isin(keep)].reset_index(drop=True)


# ---------------------------------------------------------------------------------------- coverage
def rle_area(rle: str | float | None) -> int:
    """Mask pixels of a Carvana RLE string: the sum of its run lengths (no decoding needed)."""
    if rle is None or (isinstance(rle, float) and math.isnan(rle)):
        return 0
    tokens = str(rle).split()
    return int(sum(int(t) for t in tokens[1::2]))


def with_coverage(data, index: pd.DataFrame) -> pd.DataFrame:
    """The index plus ``coverage``: the car's fraction of the image, per image.

    Read from train_masks.csv run lengths when present (fast on the full data), else by loading
    each mask.
    """
    out = index.copy()
    if len(out) == 0:
        out["coverage"] = pd.Series(dtype=float)
        return out
    shape = data.load_mask(out["id"].iloc[0]).shape
    n_pixels = float(shape[0] * shape[1])
    cov: dict[str, float] = {}
    if data.has_csv("train_masks"):
        csv = data.read_csv("train_masks")
        ids = csv["img"].astype(str).str.rsplit(".", n=1).str[0]
        cov = dict(zip(ids, (rle_area(r) / n_pixels for r in csv["rle_mask"]), strict=True))
    values = []
    for image_id in out["id"]:
        if image_id in cov:
            values.append(cov[image_id])
        else:
            values.append(float(data.load_mask(image_id).mean()))
    out["coverage"] = values
    bad = out.loc[(out["coverage"] < 0) | (out["coverage"] > 1), "id"]
    if len(bad):
        raise ValueError(
            f"train_masks.csv: masks larger than the image {shape}, e.g. {list(bad[:5])}"
        )
    return out


# ------------------------------------------------------------------------------------------ checks
def image_sizes(data, index: pd.DataFrame, split: str = "train") -> pd.Series:
    """Counts of ``WxH`` sizes over the index's images, read from the JPEG headers only."""
    from PIL import Image

    store = data.train if split == "train" else data.test
    sizes = []
    for name in index["image"]:
        with Image.open(io.BytesIO(store.read_bytes(name))) as im:
            sizes.append(f"{im.size[0]}x{im.size[1]}")
    return pd.Series(sizes, dtype=str).value_counts()


def data_checks(
    data, train: pd.DataFrame, test: pd.DataFrame | None = None, sample_size: int | None = 4
) -> pd.DataFrame:
    """One row per check (check, value, ok, note): counts, all 16 angles per car, masks, sizes,
    metadata, test. ``ok`` is always a real bool (a check that cannot fail says so in ``note``), so
    a table filtered on ``~ok`` lists exactly what needs a look.

    Image sizes are read from the images of ``sample_size`` cars (headers only).
    """
    rows: list[tuple[str, object, bool, str]] = []
    n_cars = train["car"].nunique()
    rows.append(("train images", len(train), len(train) > 0, ""))
    rows.append(("train cars", n_cars, n_cars > 0, ""))
    angles = train.groupby("car")["angle"].agg(lambda a: tuple(sorted(a)))
    full = angles.apply(lambda a: a == tuple(range(1, N_ANGLES + 1)))
    rows.append(
        (f"cars with all {N_ANGLES} angles", f"{int(full.sum())}/{n_cars}", bool(full.all()), "")
    )
    if not full.all():
        missing = ", ".join(list(angles.index[~full])[:10])
        rows.append(("cars missing angles", missing, False, "first 10 cars"))
    has_mask = train["mask"].notna() if "mask" in train.columns else pd.Series(False, train.index)
    rows.append(("masks present", f"{int(has_mask.sum())}/{len(train)}", bool(has_mask.all()), ""))
    if data.has_csv("train_masks"):
        csv = data.read_csv("train_masks")
        ids = set(csv["img"].astype(str).str.rsplit(".", n=1).str[0])
        in_csv = train["id"].isin(ids)
        rows.append(
            (
                "images in train_masks.csv",
                f"{int(in_csv.sum())}/{len(train)}",
                bool(in_csv.all()),
                "",
            )
        )
    hq = data.train_hq is not None
    rows.append(("train_hq present", hq, True, "optional: train/ is enough to train"))
    rows += _size_checks(data, train, sample_size)
    if "make" in train.columns:
        with_make = int(train.groupby("car")["make"].first().notna().sum())
        rows.append(
            (
                "cars with metadata (make)",
                f"{with_make}/{n_cars}",
                with_make == n_cars,
                "stratify='make' needs it",
            )
        )
    rows += _test_checks(data, train, test)
    return pd.DataFrame(rows, columns=["check", "value", "ok", "note"])


def _size_checks(
    data, train: pd.DataFrame, sample_size: int | None
) -> list[tuple[str, object, bool, str]]:
    """One size for every sampled image, and masks of that size."""
    sample = sample_cars(train, sample_size)
    sizes = image_sizes(data, sample)
    rows = [
        (
            f"image sizes ({len(sample)} sampled)",
            dict(sizes.items()),
            len(sizes) == 1,
            "one size for all" if len(sizes) else "no images to read",
        )
    ]
    if len(sample):
        mask_shape = data.load_mask(sample["id"].iloc[0]).shape
        w, h = (int(v) for v in sizes.index[0].split("x"))
        rows.append(
            ("mask size (HxW)", f"{mask_shape[0]}x{mask_shape[1]}", mask_shape == (h, w), "")
        )
    return rows


def _test_checks(
    data, train: pd.DataFrame, test: pd.DataFrame | None
) -> list[tuple[str, object, bool, str]]:
    """Test images exist, share no car with train, and are all in sample_submission.csv."""
    rows: list[tuple[str, object, bool, str]] = []
    if test is not None:
        rows.append(("test images", len(test), len(test) > 0, ""))
        rows.append(("test cars", test["car"].nunique(), test["car"].nunique() > 0, ""))
        overlap = set(train["car"]) & set(test["car"])
        rows.append(("cars in both train and test", len(overlap), not overlap, "must be 0"))
    if data.has_csv("sample_submission"):
        sub = data.read_csv("sample_submission")
        rows.append(("sample_submission rows", len(sub), len(sub) > 0, "06 predicts every row"))
        if test is not None and "img" in sub.columns:
            listed = test["id"].isin(set(sub["img"].astype(str).str.rsplit(".", n=1).str[0]))
            rows.append(
                (
                    "test images in sample_submission",
                    f"{int(listed.sum())}/{len(test)}",
                    bool(listed.all()),
                    "",
                )
            )
    return rows


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
def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if mask.shape == tuple(size):
        return mask.astype(np.uint8)
    area = cv2.resize(mask.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return (area >= 0.5).astype(np.uint8)


def mask_difficulty(
    image: np.ndarray, mask: np.ndarray, thin_kernel: int | None = None
) -> dict[str, float]:
    """Why a mask is hard to predict, as three numbers:

    - ``boundary_frac``: boundary pixels per mask pixel (ragged outlines: wheels, grilles, racks),
    - ``thin_frac``: mask share removed by a morphological opening (antennas, mirrors, spoilers),
    - ``edge_contrast``: mean |inside - outside| local grey level along the outline, 0..1 (low
      where the car meets its shadow or a background of its own colour).
    """
    m = (mask > 0).astype(np.uint8)
    area = int(m.sum())
    if area == 0:
        return {"boundary_frac": 0.0, "thin_frac": 0.0, "edge_contrast": float("nan")}
    h = m.shape[0]
    k3 = np.ones((3, 3), np.uint8)
    boundary = m - cv2.erode(m, k3)
    k = thin_kernel or max(3, (h // 64) | 1)
    opened = cv2.morphologyEx(
        m, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    )
    thin = int((m & (1 - opened)).sum())
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    mf = m.astype(np.float32)
    win = (k, k)
    eps = 1e-6
    inside = cv2.blur(grey * mf, win) / (cv2.blur(mf, win) + eps)
    outside = cv2.blur(grey * (1 - mf), win) / (cv2.blur(1 - mf, win) + eps)
    b = boundary.astype(bool)
    contrast = float(np.abs(inside[b] - outside[b]).mean()) if b.any() else float("nan")
    return {
        "boundary_frac": float(boundary.sum()) / area,
        "thin_frac": thin / area,
        "edge_contrast": contrast,
    }


def angle_difficulty(
    data, index: pd.DataFrame, size: tuple[int, int] = (640, 960), progress: bool = False
) -> pd.DataFrame:
    """``mask_difficulty`` for every image of ``index`` at ``size`` (H, W): id, car, angle, metrics."""
    rows = []
    ids = index[["id", "car", "angle"]].itertuples(index=False)
    if progress:
        from tqdm.auto import tqdm

        ids = tqdm(list(ids), desc="difficulty")
    for image_id, car, angle in ids:
        image = data.load_image(image_id, size=size)
        mask = _resize_mask(data.load_mask(image_id), size)
        rows.append(
            {"id": image_id, "car": car, "angle": int(angle), **mask_difficulty(image, mask)}
        )
    return pd.DataFrame(rows)


# (column, title, low value is hard) of mask_difficulty's measures
DIFFICULTY_MEASURES = (
    ("boundary_frac", "boundary pixels / mask pixels", False),
    ("thin_frac", "thin-part share of the mask", False),
    ("edge_contrast", "edge contrast (lower is harder)", True),
)


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
def overlay_mask(
    image: np.ndarray,
    mask: np.ndarray,
    alpha: float = 0.4,
    mode: str = "fill",
    color: Sequence[int] = (255, 0, 255),
    thickness: int = 2,
) -> np.ndarray:
    """RGB image with the mask drawn on it, as a translucent fill or an outline."""
    if mode not in ("fill", "outline"):
        raise ValueError(f"mode must be 'fill' or 'outline', got {mode!r}")
    if image.shape[:2] != mask.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape[:2]} differ in size")
    out = image.astype(np.float32).copy()
    col = np.asarray(color, np.float32)
    m = mask > 0
    if mode == "fill":
        out[m] = (1 - alpha) * out[m] + alpha * col
    else:
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        line = np.zeros(m.shape, np.uint8)
        cv2.drawContours(line, contours, -1, 1, thickness)
        lm = line.astype(bool)
        out[lm] = (1 - alpha) * out[lm] + alpha * col
    return np.clip(out, 0, 255).astype(np.uint8)


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
