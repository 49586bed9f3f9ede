"""The training engine: Lightning Fabric for devices, precision, DDP and checkpoint state, under
a short loop of our own with callbacks.

    stage.prepare_stage   -> StageRun (validated parameters, split by car, stage folder)
    training.train_stage  -> builds Fabric, data, model, TrainState and callbacks; Engine.fit
    loop.Engine           -> fit / train_loop / val_loop, hooks called by name
    callbacks, artefacts  -> guards, EMA, progress, loggers; best/last checkpoints, OOF, figures,
                             metrics.json
    launch                -> several devices or machines through torchrun
"""

import os

# CPU training on a few shared cores: OpenMP threads that spin while waiting collapse throughput
# when other processes compete for the cores (measured here: 0.7 -> 3.4 images/s). Only effective
# when set before torch is first imported; an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from kaggle_utils.engine.callbacks import LossHook, NonFiniteLossError  # noqa: E402
from kaggle_utils.engine.loop import Engine, FitPlan, seed_everything  # noqa: E402
from kaggle_utils.engine.stage import StageRun, build_stage_model, prepare_stage  # noqa: E402
from kaggle_utils.engine.state import TrainState  # noqa: E402
from kaggle_utils.engine.training import train_stage  # noqa: E402

__all__ = [
    "Engine",
    "FitPlan",
    "LossHook",
    "NonFiniteLossError",
    "StageRun",
    "TrainState",
    "build_stage_model",
    "prepare_stage",
    "seed_everything",
    "train_stage",
]
