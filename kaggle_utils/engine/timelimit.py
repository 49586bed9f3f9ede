"""Stop a stage cleanly before a session's time runs out, to be continued by the next session.

A Kaggle session ends after 12 hours, killing whatever runs. A stage gets a time budget (default
11 h 30 min on Kaggle, none elsewhere) counted from the session's start; when the next epoch would
not fit, the stage stops after the epoch's last.pt, writes `paused.json` ("to be continued") and
returns, so the kernel ends cleanly and its output holds everything the next version needs.

The session's start is `KAGGLE_UTILS_SESSION_START` (unix seconds), set by the first process that
asks and inherited by everything it starts (04's papermill kernels, torchrun's workers), so the
stages of one 04 kernel share one clock.
"""

from __future__ import annotations

import os
import time
from typing import Any

__all__ = ["KAGGLE_BUDGET_S", "TimeLimit", "session_deadline", "session_start"]

KAGGLE_BUDGET_S = 11.5 * 3600  # Kaggle kills a session at 12 h: 30 minutes to spare
SESSION_ENV = "KAGGLE_UTILS_SESSION_START"
BUDGET_ENV = "KAGGLE_UTILS_TIME_BUDGET_S"


def session_start() -> float:
    """Unix time this session started (the first call in a process tree fixes it)."""
    return float(os.environ.setdefault(SESSION_ENV, repr(time.time())))


def session_deadline(time_budget_s: float | None = None) -> float | None:
    """Unix time by which a stage must have stopped: the session's start + the budget.

    Args:
        time_budget_s: seconds; None takes $KAGGLE_UTILS_TIME_BUDGET_S, else 11 h 30 min on
            Kaggle, else no limit; 0 or less means no limit.
    """
    from kaggle_utils.environment import on_kaggle

    if time_budget_s is None and os.environ.get(BUDGET_ENV):
        time_budget_s = float(os.environ[BUDGET_ENV])
    if time_budget_s is None and on_kaggle():
        time_budget_s = KAGGLE_BUDGET_S
    if time_budget_s is None or time_budget_s <= 0:
        return None
    return session_start() + float(time_budget_s)


class TimeLimit:
    """After each epoch (and its last.pt): stop when another epoch would pass the deadline.

    The next epoch is assumed to take as long as the slowest of the last three, plus 10%; rank 0
    decides and every rank follows (a DDP job stops as one).
    """

    def __init__(self, deadline: float | None):
        self.deadline = deadline

    def on_train_epoch_end(self, engine: Any, epoch: int) -> None:
        if self.deadline is None or epoch + 1 >= engine.plan.epochs:
            return
        recent = [row["seconds"] for row in engine.state.history[-3:]]
        needed = 1.1 * max(recent)
        stop = time.time() + needed > self.deadline
        if engine.fabric.world_size > 1:
            stop = bool(engine.fabric.broadcast(stop, src=0))
        if stop:
            left = max(0.0, self.deadline - time.time())
            engine.stop_reason = (
                f"time budget: {left:.0f} s left, the next epoch needs ~{needed:.0f} s"
            )
