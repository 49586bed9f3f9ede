"""Tables for the EDA and split notebooks (01_eda, 02_split): data checks, coverage, difficulty.

Every function takes the data layer's objects (``CompetitionData`` and index DataFrames) and returns
a pandas table (or an image array), so notebooks stay one call per cell and tests can check the
numbers; the matplotlib figures drawn from them, and the measured (OOF Dice) check of the
difficulty heuristics, are in ``eda_plots``. Per-image pixel work is done on a sample of cars
(``sample_cars``) so the same cells run on the full competition data in minutes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import cv2
import numpy as np
import pandas as pd

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
