"""What a run reached (its summary) and, for --dry-run, what 04 would do to each stage."""

from __future__ import annotations

import os
import time
from pathlib import Path


def summarize(
    run_dir: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    since: float | None = None,
) -> str:
    """What the run reached: best Dice per member stage, the ensemble's OOF Dice, and the
    submission's score where the test truth is known (the synthetic data ships it).

    ``since``: the run's start (``time.time()``). An output older than that was not written by
    this run (its step failed or was skipped): it is named as stale, never reported as a result.
    """
    import pandas as pd
    import yaml

    run = Path(run_dir)
    lines: list[str] = []
    stale: list[Path] = []

    def fresh(path: Path) -> bool:
        ok = since is None or path.stat().st_mtime >= since - 1.0  # coarse file clocks
        if not ok:
            stale.append(path)
        return ok

    tables = [pd.read_csv(p) for p in sorted(run.glob("**/stages.csv")) if fresh(p)]
    if tables:
        stages = pd.concat(tables)[["member", "stage_name", "best_dice", "time_s"]]
        lines.append("validation Dice (held-out cars, full resolution):")
        lines.append(stages.to_string(index=False))
    if (run / "ensemble.yaml").is_file() and fresh(run / "ensemble.yaml"):
        spec = yaml.safe_load((run / "ensemble.yaml").read_text())
        submitted = (spec.get("scores") or {}).get("oof_dice_submitted")
        extra = f" (as 06 submits it: {submitted})" if submitted is not None else ""
        lines.append(f"ensemble OOF Dice: {spec.get('oof_dice')}{extra}")
    truth = Path(data_dir) / "test_masks.csv" if data_dir else None
    sub = run / "submission.csv.gz"
    if sub.is_file() and fresh(sub) and truth is not None and truth.is_file():
        from kaggle_utils.predict import score_submission

        scores = score_submission(sub, truth, shape=_image_shape(Path(data_dir)))
        lines.append(f"submission score on the synthetic test masks: {scores['dice'].mean():.5f}")
    for path in stale:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(path.stat().st_mtime))
        lines.append(f"not written by this run (left from {when}, not reported): {path}")
    return "\n".join(lines)


def _image_shape(data_dir: Path) -> tuple[int, int]:
    from kaggle_utils.layout import find_data
    from kaggle_utils.testset import image_shape

    data = find_data(data_dir)
    return image_shape(data.test, data.test.names()[0])


def _last_pt_state(last_pt: Path, params_hash: str, epochs: int) -> str:
    """What 03 will make of a last.pt: resume at its epoch, or start afresh (other parameters)."""
    import torch

    from kaggle_utils.engine.state import STATE_FORMAT

    try:
        ckpt = torch.load(last_pt, map_location="cpu", weights_only=False, mmap=True)
    except Exception as exc:  # truncated or foreign file: 03 refuses it the same way
        return f"last.pt unreadable ({type(exc).__name__}): delete it to start afresh"
    state = ckpt.get("state") if isinstance(ckpt, dict) else None
    if ckpt.get("params_hash") != params_hash or not isinstance(state, dict):
        return "new (last.pt was written with other parameters: starts afresh)"
    if state.get("format") != STATE_FORMAT:
        return "new (last.pt holds no training state: starts afresh)"
    return f"resume from epoch {int(state['epoch'])}/{epochs}"


def _stage_state(stage_dir: Path, params_hash: str, epochs: int) -> str:
    from kaggle_utils.runs import stage_status

    status = stage_status(stage_dir, params_hash)
    if status == "finished":
        return "finished (skipped)"
    if status == "resume":
        return _last_pt_state(stage_dir / "last.pt", params_hash, epochs)
    if (stage_dir / "metrics.json").exists():
        return "new (finished with other parameters: trained again)"
    return "new"


def stage_report(ensemble_file: str | os.PathLike, run_dir: str | os.PathLike) -> str:
    """Every member, fold and stage of an ensemble with what 04 would do to it in `run_dir`:
    skip it (finished), resume it from last.pt, or train it from the start. Reads only."""
    from kaggle_utils.config import load_ensemble, load_member
    from kaggle_utils.runs import stage_dir_for, stage_hash

    ensemble_path = Path(ensemble_file).resolve()
    ens = load_ensemble(ensemble_path)
    lines = [f"stages in {run_dir}:"]
    for member_file in ens.member_paths(ensemble_path):
        member = load_member(member_file)
        for fold in ens.folds:
            for i, stage in enumerate(member.stages):
                stage_dir = stage_dir_for(run_dir, member, i, fold)
                state = _stage_state(stage_dir, stage_hash(member, i, fold), stage.epochs)
                where = f"{member.name} fold {fold} {member.stage_name(i)}"
                lines.append(f"    {where:<44} {state}")
    return "\n".join(lines)
