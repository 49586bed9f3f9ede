"""Run the workflow's notebooks as Kaggle kernels: build bundles, validate them offline, push them.

python -m kaggle_utils.kernels build params/demo/ensemble.yaml --owner USER   # build/kernels/...
python -m kaggle_utils.kernels validate build/kernels                           # the CLI's rules
python -m kaggle_utils.kernels push build/kernels --wait                        # kaggle CLI uploads
python -m kaggle_utils.kernels plan params/carvana/ensemble.yaml --accelerator NvidiaTeslaT4  # hours
python -m kaggle_utils.kernels status build/kernels --outputs out/   # done / to continue / waiting
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from kaggle_utils.kernels.build import (
    COMPETITION,
    PACKAGE_DATASET,
    PACKAGE_DIR,
    KernelPlan,
    KernelSpec,
    build_kernels,
    build_package,
    kernel_metadata,
    plan_kernels,
)
from kaggle_utils.kernels.cli import (
    credentials_source,
    kaggle_cli,
    kaggle_credentials,
    kaggle_submit,
)
from kaggle_utils.kernels.upload import PushError, push
from kaggle_utils.kernels.validate import (
    BundleError,
    dataset_problems,
    kernel_problems,
    validate_dataset_bundle,
    validate_kernel_bundle,
    validate_tree,
)

__all__ = [
    "COMPETITION",
    "PACKAGE_DATASET",
    "PACKAGE_DIR",
    "BundleError",
    "KernelPlan",
    "KernelSpec",
    "PushError",
    "build_kernels",
    "build_package",
    "credentials_source",
    "kaggle_cli",
    "kaggle_credentials",
    "kaggle_submit",
    "dataset_problems",
    "kernel_metadata",
    "kernel_problems",
    "main",
    "plan_kernels",
    "push",
    "validate_dataset_bundle",
    "validate_kernel_bundle",
    "validate_tree",
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kaggle-utils-kernels",
        description="Kaggle kernel bundles for the Carvana workflow notebooks.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="write build/kernels/<slug>/ bundles for an ensemble file")
    b.add_argument("ensemble", help="params/<set>/ensemble.yaml")
    b.add_argument("--owner", required=True, help="your Kaggle username (owner of the kernels)")
    b.add_argument(
        "--out", default="build/kernels", help="where bundles go (default build/kernels)"
    )
    b.add_argument("--prefix", help="kernel slug prefix (default carvana-<ensemble name>)")
    b.add_argument(
        "--per-stage",
        action="store_true",
        help="one 03_train_member kernel per stage (chained) instead of one 04_stage_up per member",
    )
    b.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="OWNER/SLUG",
        help="extra dataset for training kernels (pretrained weights); repeatable",
    )
    b.add_argument("--internet", action="store_true", help="let training kernels use the internet")
    b.add_argument("--package-dataset", default=PACKAGE_DATASET, help="slug of the wheel dataset")
    b.add_argument("--no-package", action="store_true", help="skip the wheel dataset")
    b.add_argument("--notebooks", help="notebook folder (default: the repo's notebooks/)")
    b.add_argument("--dry-run", action="store_true", help="print the kernels and parameters only")

    v = sub.add_parser("validate", help="check bundles with the kaggle CLI's rules, offline")
    v.add_argument("out", nargs="?", default="build/kernels")

    p = sub.add_parser("push", help="upload the package dataset and kernels with the kaggle CLI")
    p.add_argument("out", nargs="?", default="build/kernels")
    p.add_argument("--only", nargs="+", metavar="SLUG", help="push only these kernels")
    p.add_argument("--no-package", action="store_true", help="do not upload the wheel dataset")
    p.add_argument("--dry-run", action="store_true", help="print the commands, upload nothing")
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait for each wave of kernels to finish before pushing the kernels that read them",
    )
    p.add_argument("--poll", type=float, default=60.0, help="seconds between status checks")

    g = sub.add_parser("plan", help="estimated GPU hours, 12-hour sessions and weekly quota")
    g.add_argument("ensemble", help="params/<set>/ensemble.yaml")
    g.add_argument("--accelerator", help="machine_shape for every GPU kernel (e.g. NvidiaTeslaT4)")
    g.add_argument("--per-stage", action="store_true", help="plan one 03 kernel per stage")
    g.add_argument("--dataset", action="append", default=[], metavar="OWNER/SLUG")
    g.add_argument("--figures", help="GPU figures file (default bench/gpu_figures.json)")

    s = sub.add_parser("status", help="which kernels are done, to continue, or waiting")
    s.add_argument("path", help="a build folder (build/kernels) or a run folder (with --ensemble)")
    s.add_argument("--outputs", help="kernel outputs, one folder per slug (default PATH/outputs)")
    s.add_argument("--ensemble", help="for a run folder: the ensemble file the kernels came from")
    return parser


def _plan_or_status(args: argparse.Namespace) -> int:
    from kaggle_utils.kernels import budget

    if args.command == "plan":
        plan = budget.plan_budget(
            args.ensemble,
            args.accelerator,
            per_stage=args.per_stage,
            datasets=args.dataset,
            figures=args.figures,
        )
        print(plan.describe())
        return 0
    statuses = budget.kernel_status(args.path, ensemble=args.ensemble, outputs=args.outputs)
    print(budget.describe_status(statuses))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command in ("plan", "status"):
            return _plan_or_status(args)
        if args.command == "build":
            if args.dry_run:
                plan = plan_kernels(
                    args.ensemble,
                    prefix=args.prefix,
                    per_stage=args.per_stage,
                    datasets=args.dataset,
                    internet=args.internet,
                    package_dataset=args.package_dataset,
                )
                print(plan.describe())
                for warning in plan.warnings:
                    print(f"warning: {warning}", file=sys.stderr)
                return 0
            kwargs = {"notebook_dir": args.notebooks} if args.notebooks else {}
            built = build_kernels(
                args.ensemble,
                args.owner,
                args.out,
                prefix=args.prefix,
                per_stage=args.per_stage,
                datasets=args.dataset,
                internet=args.internet,
                package=not args.no_package,
                package_dataset=args.package_dataset,
                **kwargs,
            )
            push_cmd = ["python", "-m", "kaggle_utils.kernels", "push", args.out, "--wait"]
            print(f"{len(built)} bundles in {args.out}, all valid; next:")
            print(f"$ {shlex.join(push_cmd)}")
        elif args.command == "validate":
            errors = validate_tree(args.out)
            for error in errors:
                print(error, file=sys.stderr)
            if errors:
                return 1
            print(f"{args.out}: all bundles valid")
        else:
            push(
                args.out,
                only=args.only,
                package=not args.no_package,
                dry_run=args.dry_run,
                wait=args.wait,
                poll_s=args.poll,
            )
    except (BundleError, PushError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
