"""Choosing member weights and the threshold on OOF Dice, and checking the choice holds.

Weights are chosen by coordinate ascent on a coarse non-negative grid (normalised to sum 1), starting
from equal weights at threshold 0.5 and accepting a move only when it gains more than `min_gain`.
The choice is cross-validated by car: choose on half the validation cars and score on the other half,
and vice versa (`cross_validate`); `keep_if_it_holds` then keeps the tuned choice only when it beats
equal weights and the best single member on held-out cars (tiny validation sets overfit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kaggle_utils.ensemble.base import DEFAULT_GRID, DEFAULT_THRESHOLDS, car_of
from kaggle_utils.ensemble.oof import OOFSet
from kaggle_utils.ensemble.scoring import image_dice

__all__ = [
    "Choice",
    "choice_scores",
    "choose",
    "cross_validate",
    "keep_if_it_holds",
    "split_cars",
]


@dataclass
class Choice:
    weights: list[float]
    threshold: float
    dice: float
    history: list[dict] = field(default_factory=list)


def choose(
    oof: OOFSet,
    grid: Sequence[float] = DEFAULT_GRID,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    rounds: int = 3,
    mode: str = "mean",
    tune_weights: bool = True,
    fixed_threshold: float | None = None,
    min_gain: float = 1e-5,
) -> Choice:
    """Coordinate ascent on a coarse non-negative weight grid, threshold scored jointly.

    Starts from equal weights at threshold 0.5; a member's raw weight moves to another grid value,
    and the threshold away from 0.5, only when mean OOF Dice gains more than `min_gain`, so ties
    and noise keep the plain equal-weight ensemble. Weights are normalised to sum 1.
    """
    thr = [fixed_threshold] if fixed_threshold is not None else list(thresholds)
    m = len(oof.members)
    raw = np.ones(m)
    default_t = int(np.argmin(np.abs(np.asarray(thr) - 0.5)))

    def evaluate(cands: np.ndarray) -> np.ndarray:  # (C, T) mean Dice
        return image_dice(oof, cands, thr, mode).mean(0)

    def pick(row: np.ndarray) -> int:
        t = int(np.argmax(row))
        return t if row[t] > row[default_t] + min_gain else default_t

    cur = evaluate(raw[None])[0]
    best_t = pick(cur)
    best = float(cur[best_t])
    history = [{"round": 0, "weights": (raw / raw.sum()).round(4).tolist(), "dice": best}]
    if tune_weights and m > 1:
        for r in range(1, rounds + 1):
            changed = False
            for i in range(m):
                cands = _moves(raw, i, grid)
                if not cands:
                    continue
                scores = evaluate(np.array(cands))
                picks = [pick(row) for row in scores]
                j = int(np.argmax([row[t] for row, t in zip(scores, picks, strict=True)]))
                t = picks[j]
                if scores[j, t] > best + min_gain:
                    raw, best, best_t, changed = cands[j], float(scores[j, t]), t, True
                    history.append(
                        {"round": r, "weights": (raw / raw.sum()).round(4).tolist(), "dice": best}
                    )
            if not changed:
                break
    w = raw / raw.sum()
    return Choice([float(x) for x in w], float(thr[best_t]), best, history)


def _moves(raw: np.ndarray, i: int, grid: Sequence[float]) -> list[np.ndarray]:
    """Raw weight vectors with member i moved to each other grid value (never all zero)."""
    cands = []
    for g in grid:
        if g == raw[i]:
            continue
        c = raw.copy()
        c[i] = g
        if c.sum() > 0:
            cands.append(c)
    return cands


def split_cars(ids: Sequence[str], seed: int = 0) -> tuple[list[str], list[str]]:
    """Two halves of the images, grouped by car (a car's 16 angles stay together)."""
    cars = sorted({car_of(i) for i in ids})
    rng = np.random.default_rng(seed)
    rng.shuffle(cars)
    half = set(cars[: len(cars) // 2])
    a = [i for i in ids if car_of(i) in half]
    b = [i for i in ids if car_of(i) not in half]
    return a, b


def cross_validate(oof: OOFSet, seed: int = 0, **choose_kw: Any) -> pd.DataFrame:
    """Two-fold CV of the choice by car: choose on one half, score on the other, and vice versa.

    Rows per direction: chosen weights/threshold, their in-sample and held-out Dice, and the held-out
    Dice of equal weights at 0.5 and of the best single member (chosen on the tuning half).
    """
    a, b = split_cars(oof.ids, seed)
    if not a or not b:
        raise ValueError(
            f"cross-validation needs validation images of >= 2 cars, got {oof.ids[:3]}"
        )
    rows = []
    m = len(oof.members)
    for name, tune_ids, test_ids in (("A->B", a, b), ("B->A", b, a)):
        tune, test = oof.subset(tune_ids), oof.subset(test_ids)
        c = choose(tune, **choose_kw)
        mode = choose_kw.get("mode", "mean")
        singles_tune = image_dice(tune, np.eye(m), [0.5], mode).mean(0)[:, 0]
        best_single = int(np.argmax(singles_tune))
        held = image_dice(
            test,
            np.vstack([c.weights, np.ones(m), np.eye(m)[best_single]]),
            [c.threshold, 0.5],
            mode,
        ).mean(0)
        rows.append(
            {
                "direction": name,
                "tune_images": len(tune_ids),
                "test_images": len(test_ids),
                "weights": [round(w, 3) for w in c.weights],
                "threshold": c.threshold,
                "tune_dice": c.dice,
                "heldout_dice": float(held[0, 0]),
                "heldout_equal@0.5": float(held[1, 1]),
                "heldout_best_single@0.5": float(held[2, 1]),
                "best_single": oof.members[best_single],
            }
        )
    return pd.DataFrame(rows)


def keep_if_it_holds(
    oof: OOFSet,
    choice: Choice,
    cv: pd.DataFrame,
    mode: str = "mean",
    fixed_threshold: float | None = None,
) -> tuple[Choice, str]:
    """Whichever of three held up best on held-out cars (`cross_validate`): the tuned choice,
    equal weights, or the best single member (both at the default threshold). A small validation
    set overfits: then the search found noise and the plain choice is safer. Ties keep the tuned
    choice. Returns the choice and a sentence saying which and why."""
    held = {
        "tuned": float(cv["heldout_dice"].mean()),
        "equal": float(cv["heldout_equal@0.5"].mean()),
        "single": float(cv["heldout_best_single@0.5"].mean()),
    }
    winner = max(held, key=lambda k: (held[k], k == "tuned"))
    scores = ", ".join(f"{k} {v:.5f}" for k, v in held.items())
    if winner == "tuned":
        return choice, f"tuned choice kept: held-out Dice {scores}"
    m = len(oof.members)
    t = 0.5 if fixed_threshold is None else fixed_threshold
    if winner == "equal":
        w = np.full(m, 1.0 / m)
    else:
        singles = image_dice(oof, np.eye(m), [t], mode).mean(0)[:, 0]
        w = np.eye(m)[int(np.argmax(singles))]
    dice = float(image_dice(oof, w[None], [t], mode).mean())
    plain = Choice([float(x) for x in w], t, dice, choice.history)
    label = "equal weights" if winner == "equal" else f"{oof.members[int(np.argmax(w))]} alone"
    return plain, (
        f"{label} at threshold {t} instead of the tuned choice: held-out Dice {scores} "
        "(the search fitted noise in a small validation set)"
    )


def choice_scores(
    choice: Choice,
    cv: pd.DataFrame,
    decision: str,
    n_images: int,
    submitted: pd.DataFrame | None = None,
) -> dict:
    """What 05 records beside the weights: OOF Dice (as searched, and of the masks 06 writes:
    `submitted_score`), its held-out check, and why it was kept."""
    out = (
        {"oof_dice_submitted": round(float(submitted["dice"].mean()), 6)}
        if submitted is not None
        else {}
    )
    return {
        **out,
        "oof_dice": round(choice.dice, 6),
        "cv_heldout_dice": round(float(cv["heldout_dice"].mean()), 6),
        "cv_heldout_equal_0.5": round(float(cv["heldout_equal@0.5"].mean()), 6),
        "decision": decision,
        "n_images": int(n_images),
    }
