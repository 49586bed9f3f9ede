"""Batch runner: executes the numbered notebooks with papermill for one ensemble file.

01 (EDA) and 02 (split) once, 04 (stage-up, which runs 03 per stage) for every member and fold, then 05
(ensemble) and 06 (submit). A failed member is reported and the others go on; the exit status says so.
"""

from kaggle_utils.pipeline.cli import EXAMPLES, STEP_HELP, UsageError, ensure_synthetic, main
from kaggle_utils.pipeline.plan import (
    NOTEBOOK_DIR,
    STEPS,
    Job,
    JobResult,
    Plan,
    Step,
    build_plan,
    gpu_count,
)
from kaggle_utils.pipeline.report import stage_report, summarize
from kaggle_utils.pipeline.run import run_job, run_plan
from kaggle_utils.pipeline.stage_up import stage_up

__all__ = [
    "EXAMPLES",
    "NOTEBOOK_DIR",
    "STEPS",
    "STEP_HELP",
    "Job",
    "JobResult",
    "Plan",
    "Step",
    "UsageError",
    "build_plan",
    "ensure_synthetic",
    "gpu_count",
    "main",
    "run_job",
    "run_plan",
    "stage_report",
    "stage_up",
    "summarize",
]
