"""`python -m kaggle_utils.pseudo`: write a pseudo-label folder from a run's ensemble."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaggle_utils.pseudo.folder import pseudo_dir
from kaggle_utils.pseudo.write import write_pseudo_labels

if TYPE_CHECKING:
    from kaggle_utils.inference import Member


def _members(args: argparse.Namespace, run_dir: Path, device: Any) -> list[Member]:
    from kaggle_utils.inference import load_members, members_from_ensemble

    if args.checkpoint:
        return load_members(args.checkpoint, device=device)
    if args.ensemble:
        from kaggle_utils.ensemble.spec import read_ensemble

        return members_from_ensemble(read_ensemble(args.ensemble), run_dir, device=device)
    from kaggle_utils.ensemble.spec import submit_ensemble

    spec, base = submit_ensemble(run_dir)  # 05's ensemble.yaml, else each member's best stage
    return members_from_ensemble(spec, base, device=device)


def main(argv: list[str] | None = None) -> int:
    """`python -m kaggle_utils.pseudo --run-dir RUN --out pseudo/r1 --size 256x384`."""
    import kaggle_utils.pseudo as package  # its docstring is the --help text
    from kaggle_utils.config.member import parse_size
    from kaggle_utils.environment import resolve_run_dir
    from kaggle_utils.inference import pick_device
    from kaggle_utils.layout import find_data

    ap = argparse.ArgumentParser(
        prog="python -m kaggle_utils.pseudo",
        description=package.__doc__,
    )
    ap.add_argument("--run-dir", required=True, help="the run folder (members, ensemble.yaml)")
    ap.add_argument("--out", required=True, help="the folder to write; relative: under --run-dir")
    ap.add_argument("--size", required=True, help="HxW of the maps, e.g. the stage's size")
    ap.add_argument("--max-uncertain", type=float, default=0.01)
    ap.add_argument("--ensemble", help="an ensemble.yaml (default: the run's, as 06 picks it)")
    ap.add_argument("--checkpoint", action="append", help="member best.pt (repeatable)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--limit", type=int, default=None, help="the first N test images only")
    ap.add_argument("--no-tta", action="store_true")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    run_dir = resolve_run_dir(args.run_dir)
    device = pick_device(args.device)
    members = _members(args, run_dir, device)
    write_pseudo_labels(
        members, find_data(args.data_dir), pseudo_dir(args.out, run_dir), parse_size(args.size),
        args.max_uncertain, limit=args.limit, tta=not args.no_tta,
        batch_size=args.batch_size, device=device,
    )  # fmt: skip
    return 0
