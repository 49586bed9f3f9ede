"""The resume fingerprint of 06's submission: which members and settings wrote the parts of an
interrupted run (``<out>.parts/predict.json``), so that another ensemble's parts are never resumed
silently.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kaggle_utils.config import GuidedFilterConfig
from kaggle_utils.inference import Member


def _fingerprint(members: Sequence[Member], **settings: Any) -> dict:
    return {
        "members": [
            {
                "checkpoint": str(Path(m.checkpoint).resolve()),
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
    if old is not None and old != _fingerprint(members, **settings):
        raise ValueError(
            f"{parts} holds parts of an interrupted run with other members or settings "
            f"({old}); delete that folder or pass restart=True"
        )


def save_fingerprint(out_path: Path, members: Sequence[Member], **settings: Any) -> None:
    import json

    from kaggle_utils.atomic import atomic_write_text

    atomic_write_text(_fingerprint_path(out_path), json.dumps(_fingerprint(members, **settings)))


def resume_settings(
    tta: bool,
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
