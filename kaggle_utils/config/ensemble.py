"""An ensemble's parameters: which members (and folds), and where data and runs live."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from kaggle_utils.config.member import GuidedFilterConfig, _Strict


class EnsembleConfig(_Strict):
    """Which members (and folds) make the ensemble, and where data and runs live."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    members: list[str] = Field(min_length=1, description="member YAMLs, relative to this file")
    folds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    n_folds: int = Field(default=5, ge=2, description="02_split: folds grouped by car")
    stratify: Literal["area", "make", "coverage", None] = Field(
        default="area",
        description="02_split: 'area' deals cars sorted by mean mask area to folds in snake "
        "order (the 1st-place rule); 'make'; 'coverage' (area buckets, shuffled); None",
    )
    seed: int = 0
    data_dir: str | None = None
    run_dir: str | None = Field(default=None, description="None -> runs/<name>")
    synthetic: dict[str, Any] | None = Field(
        default=None, description="generate synthetic data into data_dir first (demo)"
    )
    tta: list[str | list[str]] = Field(
        default_factory=lambda: ["none", "hflip"],
        description="05: candidate TTA settings, each scored on OOF, the best recorded for 06: "
        "a preset (none, hflip, scales, hflip+scales), transform names joined by '+' "
        "(identity+hflip+scale_1.125) or a list of them (kaggle_utils.tta)",
    )
    combine: Literal["mean", "vote"] = "mean"
    threshold: float | None = Field(default=None, gt=0, lt=1, description="None -> tuned on OOF")
    largest_component: bool = Field(
        default=False, description="06: keep each test mask's largest connected component"
    )
    guided_filter: GuidedFilterConfig | None = Field(
        default=None, description="06: upsample with the photo as guide (refine)"
    )
    predict_batch_size: int = Field(default=4, ge=1)
    submit_limit: int | None = Field(default=None, ge=1)
    n_shards: int | None = Field(
        default=None, ge=1, description="06: N test shards (parallel), merged"
    )
    accelerator: str | None = Field(
        default=None,
        description="Kaggle kernels: machine_shape of the GPU kernels (03/04/05/06), an id of "
        "kaggle_utils.kernels.validate.ACCELERATORS; None -> NvidiaTeslaT4 (GPU T4 x2)",
    )
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("tta")
    @classmethod
    def _tta_settings_known(cls, value: list) -> list:
        from kaggle_utils.tta import parse_setting

        labels = [parse_setting(v).label for v in value]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"TTA settings {dup} listed twice: list each candidate once")
        return value

    @model_validator(mode="after")
    def _folds_in_range(self) -> EnsembleConfig:
        bad = [f for f in self.folds if not 0 <= f < self.n_folds]
        if bad:
            raise ValueError(
                f"folds {bad} must lie in 0..{self.n_folds - 1} (n_folds={self.n_folds})"
            )
        return self

    def member_paths(self, ensemble_file: str | os.PathLike | None = None) -> list[Path]:
        """Member files resolved against the ensemble file's folder."""
        from kaggle_utils.environment import project_path  # relative: under the project root

        source = project_path(ensemble_file) if ensemble_file else self.source
        base = source.parent if source else Path.cwd()
        return [(base / m).resolve() for m in self.members]

    def resolved_run_dir(self) -> str:
        return self.run_dir or f"runs/{self.name}"
