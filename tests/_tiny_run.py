"""Build a tiny run folder without training: random-init member checkpoints + constructed OOF.

Used by test_ensemble, test_predict and test_notebooks_submit. OOF probabilities are the truth mask
at the stage's size, blurred and mixed with member-specific noise, so an average of members is
measurably better than either alone (independent errors).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from kaggle_utils.checkpoint import atomic_write_json, save_checkpoint
from kaggle_utils.models import build_model

# What train_stage leaves in every stage folder (the run-folder contract 04/05/06 and kernels read).
STAGE_ARTEFACTS = [
    "last.pt",
    "best.pt",
    "metrics.json",
    "history.csv",
    "params.json",
    "oof.csv",
    "curves.png",
    "worst.png",
]

TINY_SPEC = {
    "arch": "unet",
    "encoder": "mobilenet_v2",
    "encoder_weights": None,
    "encoder_depth": 3,
    "decoder_channels": [32, 16, 8],
}


def tiny_checkpoint(path: Path, size=(64, 96), member="tiny", stage="s1_64x96", seed=0) -> Path:
    """A randomly initialised tiny member checkpoint loadable by checkpoint.load_member_model."""
    torch.manual_seed(seed)
    model = build_model(TINY_SPEC)
    return save_checkpoint(
        path,
        model,
        model_spec=TINY_SPEC,
        size=size,
        epoch=1,
        extra={"member": member, "stage": stage, "dice": 0.5},
    )


def noisy_oof(mask: np.ndarray, size, rng: np.random.Generator, noise: float) -> np.ndarray:
    """uint8 probability map at `size`: blurred truth plus smooth member-specific noise."""
    h, w = size
    m = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    m = cv2.GaussianBlur(m, (5, 5), 0)
    field = rng.normal(0, 1, (max(2, h // 8), max(2, w // 8))).astype(np.float32)
    field = cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC)
    p = np.clip(m + noise * field, 0, 1)
    return (p * 255).round().astype(np.uint8)


def make_run(
    data,
    run_dir: Path,
    members=(("alpha", (64, 96), 0.35), ("beta", (96, 128), 0.35)),
    n_val_cars: int = 2,
    seed: int = 0,
) -> dict:
    """<run_dir>/<member>/<stage>/{best.pt, metrics.json, params.json, oof/*.png, oof.csv}."""
    from kaggle_utils.index import train_index

    index = train_index(data)
    cars = sorted(index["car"].unique())[:n_val_cars]
    val = index[index["car"].isin(cars)].reset_index(drop=True)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, (name, size, noise) in enumerate(members):
        stage = f"s1_{size[0]}x{size[1]}"
        stage_dir = run_dir / name / stage
        tiny_checkpoint(stage_dir / "best.pt", size, name, stage, seed=seed + k)
        rng = np.random.default_rng(seed + 100 * k)
        rows = []
        for image_id in val["id"]:
            mask = data.load_mask(image_id)
            prob = noisy_oof(mask, size, rng, noise)
            (stage_dir / "oof").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(stage_dir / "oof" / f"{image_id}.png"), prob)
            up = cv2.resize(prob, mask.shape[::-1], interpolation=cv2.INTER_LINEAR) > 127
            inter = np.logical_and(up, mask > 0).sum()
            rows.append((image_id, 2 * inter / max(1, up.sum() + (mask > 0).sum())))
        oof = pd.DataFrame(rows, columns=["id", "dice"])
        oof.to_csv(stage_dir / "oof.csv", index=False)
        atomic_write_json(
            stage_dir / "metrics.json",
            {"size": list(size), "best_dice": float(oof["dice"].mean()), "epochs": 1},
        )
        (stage_dir / "params.json").write_text(
            json.dumps({"member": {"name": name, "model": TINY_SPEC}, "stage": 0})
        )
        out[name] = stage_dir
    return out
