"""04's stage-up: 03 via papermill once per stage of a member, each from the previous best.pt."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def stage_up(
    member_file: str | os.PathLike,
    *,
    fold: int | None = None,
    data_dir: str | os.PathLike | None = None,
    run_dir: str | os.PathLike = "runs/demo",
    device: str | None = None,
    overrides: dict[str, Any] | None = None,
    notebook: str = "03_train_member.ipynb",
    time_budget_s: float | None = None,
) -> Any:
    """Run 03 through papermill for each stage of a member, in order, each stage initialised from
    the previous stage's best.pt; finished stages are skipped. Returns (and writes
    `<run_dir>/<member>/stages.csv` and `stages.png`) one row per stage.

    The executed 03 notebook of each stage is kept beside its outputs. A failing stage raises
    `notebook.NotebookExecutionError` naming the cell; later stages are not run. With a time
    budget (default 11 h 30 min on Kaggle; engine.timelimit) a stage that would run over stops
    cleanly, "to be continued": its row says so and later stages wait for the next session.
    """
    import pandas as pd

    from kaggle_utils import plots
    from kaggle_utils.atomic import atomic_write_text
    from kaggle_utils.config import load_member
    from kaggle_utils.engine.timelimit import session_start
    from kaggle_utils.environment import project_path, resolve_run_dir
    from kaggle_utils.runs import (
        paused_info,
        restore_stage,
        stage_dir_for,
        stage_hash,
        stage_status,
    )

    session_start()  # one clock for every stage's 03 kernel (they inherit it)
    member_path = project_path(member_file).resolve()
    member = load_member(member_path, overrides)
    fold = member.fold if fold is None else int(fold)
    run_path = resolve_run_dir(run_dir).resolve()
    params = {
        "member_file": str(member_path),
        "fold": fold,
        "data_dir": str(project_path(data_dir).resolve()) if data_dir else None,
        "run_dir": str(run_path),
        "device": device,
        "overrides": dict(overrides or {}),
        "time_budget_s": time_budget_s,
    }
    rows: list[dict[str, Any]] = []
    init: Path | None = None
    for i in range(len(member.stages)):
        stage_dir = stage_dir_for(run_path, member, i, fold)
        restore_stage(stage_dir)  # the previous Kaggle session's output, when attached
        status = stage_status(stage_dir, stage_hash(member, i, fold))
        started = time.perf_counter()
        if status == "finished":
            print(f"[skip] {member.name} {member.stage_name(i)}: finished", flush=True)
        else:
            print(f"[run ] {member.name} {member.stage_name(i)} ({status}) -> {stage_dir}")
            stage_params = {**params, "stage": i, "init_checkpoint": str(init) if init else None}
            _run_03(notebook, stage_dir, stage_params)
        paused = paused_info(stage_dir)
        rows.append(_row(member, i, stage_dir, status, paused, time.perf_counter() - started))
        if paused:
            print(f"[wait] {member.name}: {member.stage_name(i)} is to be continued", flush=True)
            break
        init = stage_dir / "best.pt"
    table = pd.DataFrame(rows)
    member_dir = stage_dir_for(run_path, member, 0, fold).parent
    atomic_write_text(member_dir / "stages.csv", table.to_csv(index=False))
    figure = plots.stage_dice(table, title=f"{member.name}: Dice per stage")
    plots.save_figure(figure, member_dir / "stages.png")
    return table


def _run_03(notebook: str, stage_dir: Path, params: dict[str, Any]) -> None:
    from kaggle_utils.notebook import REPO_NOTEBOOKS, execute_notebook

    cwd = REPO_NOTEBOOKS.parent if REPO_NOTEBOOKS.is_dir() else None
    execute_notebook(notebook, stage_dir / Path(notebook).name, params, cwd=cwd)


def _row(member: Any, i: int, stage_dir: Path, status: str, paused: Any, wall: float) -> dict:
    """One stages.csv row: a finished stage's metrics.json, or how far a paused one got."""
    metrics = paused or json.loads((stage_dir / "metrics.json").read_text())
    done = "to be continued" if paused else "skipped" if status == "finished" else "trained"
    return {
        "member": member.name,
        "stage": i,
        "stage_name": member.stage_name(i),
        "size": "x".join(str(s) for s in member.stages[i].size),
        "epochs": member.stages[i].epochs,
        "best_dice": metrics["best_dice"],
        "best_epoch": metrics.get("best_epoch", metrics.get("epochs_done")),
        "time_s": metrics["time_s"],
        "images_per_s": metrics.get("images_per_s"),
        "status": done,
        "wall_s": round(wall, 1),
        "checkpoint": str(stage_dir / "best.pt"),
    }
