"""OOF-tuned ensembling (05): a leaderboard of members, member weights and threshold chosen on OOF
Dice, and the ensemble.yaml 06 submits.

Scores are Kaggle's: mean over images of Dice at full resolution (probabilities upsampled bilinearly
to the mask's size, as 06 does). The parts, each importable on its own:

- `stages`: the leaderboard and the stage each member contributes (`runs.find_stages` finds them);
- `oof`: the members' OOF probabilities, stored or re-predicted under TTA settings (`OOFSet`);
- `scoring`: per-image Dice from histograms (a threshold grid in one pass), and the Dice of the
  masks 06 actually writes (`submitted_score`);
- `search`: weights and threshold by coordinate ascent, cross-validated by car;
- `tta_choice`: the TTA setting 05 records, each candidate scored on OOF (`choose_tta`);
- `spec`: ensemble.yaml, written here and read by 06.

Inference (loading checkpoints, the TTA forward, the blend) is `kaggle_utils.inference`, shared
with 06's `predict`; this package and `predict` never import each other.
"""

from __future__ import annotations

from kaggle_utils.ensemble.base import (
    BINS,
    DEFAULT_GRID,
    DEFAULT_THRESHOLDS,
    angle_of,
    car_of,
    single_thread,
)
from kaggle_utils.ensemble.oof import (
    OOFSet,
    Prepared,
    oof_set,
    probability_sources,
    read_oof,
    repredict,
    repredict_settings,
)
from kaggle_utils.ensemble.scoring import (
    dice_from_hist,
    ensemble_prob,
    image_dice,
    member_table,
    plot_dice_by_angle,
    score,
    settings_table,
    submitted_score,
)
from kaggle_utils.ensemble.search import (
    Choice,
    choice_scores,
    choose,
    cross_validate,
    keep_if_it_holds,
    split_cars,
)
from kaggle_utils.ensemble.spec import (
    default_spec,
    ensemble_spec,
    read_ensemble,
    submit_ensemble,
    write_ensemble,
)
from kaggle_utils.ensemble.stages import SnapshotStage, leaderboard, pick_stages, snapshot_stages
from kaggle_utils.ensemble.tta_choice import choose_tta
from kaggle_utils.runs import FinishedStage, find_stages, member_names

__all__ = [
    "BINS",
    "DEFAULT_GRID",
    "DEFAULT_THRESHOLDS",
    "Choice",
    "FinishedStage",
    "OOFSet",
    "Prepared",
    "SnapshotStage",
    "angle_of",
    "car_of",
    "choice_scores",
    "choose",
    "choose_tta",
    "cross_validate",
    "default_spec",
    "dice_from_hist",
    "ensemble_prob",
    "ensemble_spec",
    "find_stages",
    "image_dice",
    "keep_if_it_holds",
    "leaderboard",
    "member_names",
    "member_table",
    "oof_set",
    "pick_stages",
    "plot_dice_by_angle",
    "probability_sources",
    "read_ensemble",
    "read_oof",
    "repredict",
    "repredict_settings",
    "score",
    "settings_table",
    "single_thread",
    "snapshot_stages",
    "split_cars",
    "submit_ensemble",
    "submitted_score",
    "write_ensemble",
]
