"""The resume fingerprint of 06's submission: which members and settings wrote the parts of an
interrupted run (``<out>.parts/predict.json``), so that another ensemble's parts are never resumed
silently.

Checkpoints inside the run folder (the submission's own folder) are recorded relative to it, so a
run folder that was moved or copied (to another disk, into a Kaggle dataset) still resumes;
checkpoints elsewhere (upstream kernels' outputs) stay absolute. Fingerprints of earlier versions,
absolute throughout, are read the same way.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kaggle_utils.config import GuidedFilterConfig
from kaggle_utils.inference import Member


def _checkpoint_key(checkpoint: str | Path, run_dir: Path) -> str:
    """A checkpoint (absolute, or relative to the working directory) as the fingerprint records
    it: relative to `run_dir` when inside it (POSIX separators), else absolute."""
    path = Path(checkpoint).resolve()
    try:
        return path.relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return str(path)


def _fingerprint(members: Sequence[Member], run_dir: Path, **settings: Any) -> dict:
    return {
        "members": [
            {
                "checkpoint": _checkpoint_key(m.checkpoint, run_dir),
                "weight": round(m.weight, 6),
                "size": list(m.size),
            }  # fmt: skip
            for m in members
        ],
        **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in settings.items()},
    }


def _fingerprint_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".parts") / "predict.json"


def check_resume(out_path: Path, members: Sequence[Member], restart: bool, **settings: Any) -> None:
    """Refuse to resume parts that another ensemble wrote (or drop them when restart)."""
    import json

    parts = out_path.with_name(out_path.name + ".parts")
    if not parts.is_dir():
        return
    if restart:
        shutil.rmtree(parts)
        return
    path = _fingerprint_path(out_path)
    old = json.loads(path.read_text()) if path.is_file() else None
    if old is not None and _readable(old, out_path.parent) != _fingerprint(
        members, out_path.parent, **settings
    ):
        raise ValueError(
            f"{parts} holds parts of an interrupted run with other members or settings "
            f"({old}); delete that folder or pass restart=True"
        )


def _readable(old: Any, run_dir: Path) -> Any:
    """A stored fingerprint with its checkpoints as `_fingerprint` writes them now (an earlier
    version's absolute paths inside the run folder become relative)."""
    if not isinstance(old, dict) or not isinstance(old.get("members"), list):
        return old
    members = [
        {**m, "checkpoint": _checkpoint_key(m["checkpoint"], run_dir)}
        if isinstance(m, dict) and Path(str(m.get("checkpoint"))).is_absolute()
        else m  # already relative to the run folder
        for m in old["members"]
    ]
    return {**old, "members": members}


def save_fingerprint(out_path: Path, members: Sequence[Member], **settings: Any) -> None:
    import json

    from kaggle_utils.atomic import atomic_write_text

    record = _fingerprint(members, out_path.parent, **settings)
    atomic_write_text(_fingerprint_path(out_path), json.dumps(record))


def resume_settings(
    tta: bool | list[str],
    mode: str,
    threshold: float,
    largest_component: bool,
    guided: GuidedFilterConfig | None,
) -> dict[str, Any]:
    """What the resume fingerprint records; optional settings only when on, so earlier runs'
    fingerprints stay valid."""
    settings: dict[str, Any] = {"tta": tta, "mode": mode, "threshold": threshold}
    if largest_component:
        settings["largest_component"] = True
    if guided is not None:
        settings["guided_filter"] = guided.model_dump()
    return settings
