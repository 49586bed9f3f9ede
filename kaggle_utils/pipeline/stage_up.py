"""04's stage-up: 03 via papermill once per stage of a member, each from the previous best.pt."""

from __future__ import annotations

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
) -> Any:
    """Run 03 through papermill for each stage of a member, in order, each stage initialised from
    the previous stage's best.pt; finished stages are skipped. Returns (and writes
    `<run_dir>/<member>/stages.csv` and `stages.png`) one row per stage.

    The executed 03 notebook of each stage is kept beside its outputs. A failing stage raises
    `notebook.NotebookExecutionError` naming the cell; later stages are not run.
    """
    import json

    import pandas as pd

    from kaggle_utils import plots
    from kaggle_utils.atomic import atomic_write_text
    from kaggle_utils.config import load_member
    from kaggle_utils.environment import project_path, resolve_run_dir
    from kaggle_utils.notebook import REPO_NOTEBOOKS, execute_notebook
    from kaggle_utils.runs import stage_dir_for, stage_hash, stage_status

    member_path = project_path(member_file).resolve()
    member = load_member(member_path, overrides)
    fold = member.fold if fold is None else int(fold)
    run_path = resolve_run_dir(run_dir).resolve()
    rows: list[dict[str, Any]] = []
    init: Path | None = None
    for i in range(len(member.stages)):
        stage_dir = stage_dir_for(run_path, member, i, fold)
        status = stage_status(stage_dir, stage_hash(member, i, fold))
        started = time.perf_counter()
        if status == "finished":
            print(f"[skip] {member.name} {member.stage_name(i)}: finished", flush=True)
        else:
            print(
                f"[run ] {member.name} {member.stage_name(i)} ({status}) -> {stage_dir}", flush=True
            )
            execute_notebook(
                notebook,
                stage_dir / Path(notebook).name,
                {
                    "member_file": str(member_path),
                    "stage": i,
                    "fold": fold,
                    "data_dir": str(project_path(data_dir).resolve()) if data_dir else None,
                    "run_dir": str(run_path),
                    "init_checkpoint": str(init) if init else None,
                    "device": device,
                    "overrides": dict(overrides or {}),
                },
                cwd=REPO_NOTEBOOKS.parent if REPO_NOTEBOOKS.is_dir() else None,
            )
        metrics = json.loads((stage_dir / "metrics.json").read_text())
        rows.append(
            {
                "member": member.name,
                "stage": i,
                "stage_name": member.stage_name(i),
                "size": "x".join(str(s) for s in member.stages[i].size),
                "epochs": member.stages[i].epochs,
                "best_dice": metrics["best_dice"],
                "best_epoch": metrics["best_epoch"],
                "time_s": metrics["time_s"],
                "images_per_s": metrics["images_per_s"],
                "status": "skipped" if status == "finished" else "trained",
                "wall_s": round(time.perf_counter() - started, 1),
                "checkpoint": str(stage_dir / "best.pt"),
            }
        )
        init = stage_dir / "best.pt"
    table = pd.DataFrame(rows)
    member_dir = stage_dir_for(run_path, member, 0, fold).parent
    atomic_write_text(member_dir / "stages.csv", table.to_csv(index=False))
    plots.save_figure(
        plots.stage_dice(table, title=f"{member.name}: Dice per stage"), member_dir / "stages.png"
    )
    return table
