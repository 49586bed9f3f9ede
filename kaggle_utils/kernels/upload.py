"""Upload built bundles with the kaggle CLI: the package dataset first, then kernels, upstream first.

Everything is validated (and credentials looked up) before the first upload, so a broken bundle or a
missing API token stops the push with nothing sent. Each command is printed before it runs.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from kaggle_utils.kernels.build import PACKAGE_DIR
from kaggle_utils.kernels.cli import NO_CREDENTIALS, credentials_source, kaggle_cli
from kaggle_utils.kernels.validate import (
    DATASET_METADATA_FILE,
    KERNEL_METADATA_FILE,
    validate_tree,
)

__all__ = ["PushError", "credentials_source", "discover", "push_command", "push_waves", "push"]


class PushError(RuntimeError):
    """A push that cannot start (invalid bundles, no credentials) or a CLI command that failed."""


def discover(out: str | os.PathLike) -> tuple[Path | None, dict[str, Path]]:
    """The package dataset folder (or None) and the kernel bundles by id under `out`."""
    out = Path(out)
    if not out.is_dir():
        raise PushError(f"{out}: no such folder; run `python -m kaggle_utils.kernels build` first")
    package = out / PACKAGE_DIR
    kernels: dict[str, Path] = {}
    for folder in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")):
        meta = folder / KERNEL_METADATA_FILE
        if meta.is_file():
            kernels[json.loads(meta.read_text(encoding="utf-8"))["id"]] = folder
    has_package = (package / DATASET_METADATA_FILE).is_file()
    return (package if has_package else None), kernels


def push_waves(kernels: dict[str, Path]) -> list[list[str]]:
    """Kernel ids grouped so every kernel comes after the kernels it reads (kernel_sources)."""
    upstream = {
        kid: [
            s
            for s in json.loads((folder / KERNEL_METADATA_FILE).read_text()).get(
                "kernel_sources", []
            )
            if s in kernels
        ]
        for kid, folder in kernels.items()
    }
    level: dict[str, int] = {}

    def depth(kid: str, seen: tuple[str, ...] = ()) -> int:
        if kid in seen:
            raise PushError(f"kernel_sources form a cycle: {' -> '.join((*seen, kid))}")
        if kid not in level:
            level[kid] = 1 + max((depth(u, (*seen, kid)) for u in upstream[kid]), default=-1)
        return level[kid]

    for kid in kernels:
        depth(kid)
    waves: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for kid in sorted(kernels):
        waves[level[kid]].append(kid)
    return waves


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess:
    """Run one kaggle CLI command, echoing its output."""
    done = subprocess.run(list(cmd), capture_output=True, text=True)
    text = (done.stdout + done.stderr).strip()
    if text:
        print("  " + text.replace("\n", "\n  "), flush=True)
    return done


def _say(cmd: Sequence[str]) -> None:
    print("$ " + shlex.join(str(c) for c in cmd), flush=True)


def _failed(done: subprocess.CompletedProcess) -> bool:
    text = (done.stdout + done.stderr).lower()
    return done.returncode != 0 or "error" in text


def push_command(cli: Sequence[str], folder: Path) -> list[str]:
    """`kaggle kernels push` for one bundle, with `--accelerator` set to its machine_shape: the
    CLI's flag wins over the metadata on the server side, so both say the same GPU."""
    cmd = [*cli, "kernels", "push", "-p", str(folder)]
    meta = json.loads((folder / KERNEL_METADATA_FILE).read_text(encoding="utf-8"))
    if meta.get("machine_shape"):
        cmd += ["--accelerator", str(meta["machine_shape"])]
    return cmd


def _push_package(cli: list[str], package: Path, message: str, dry_run: bool) -> None:
    ref = json.loads((package / DATASET_METADATA_FILE).read_text())["id"]
    status = [*cli, "datasets", "status", ref]
    create = [*cli, "datasets", "create", "-p", str(package)]
    version = [*cli, "datasets", "version", "-p", str(package), "-m", message]
    if dry_run:
        _say(status)
        print(f"# then, if {ref} exists:", flush=True)
        _say(version)
        print("# else:", flush=True)
        _say(create)
        return
    _say(status)
    exists = not _failed(_run(status))
    cmd = version if exists else create
    _say(cmd)
    done = _run(cmd)
    if _failed(done):
        raise PushError(f"uploading the package dataset {ref} failed (exit {done.returncode})")
    # Kernels attach the latest *ready* version: wait so they get this wheel and these params.
    for _ in range(60):
        done = _run(status)
        if "ready" in (done.stdout + done.stderr).lower():
            return
        time.sleep(10)
    raise PushError(f"dataset {ref} is not ready after 10 minutes; push the kernels later")


def _wait_for(cli: list[str], kernel_ids: list[str], poll_s: float, timeout_s: float) -> None:
    """Poll `kaggle kernels status` until every kernel of a wave finished (or one failed)."""
    deadline = time.monotonic() + timeout_s
    pending = list(kernel_ids)
    while pending:
        for kid in list(pending):
            cmd = [*cli, "kernels", "status", kid]
            _say(cmd)
            text = (_run(cmd).stdout or "").lower()
            if "complete" in text:
                pending.remove(kid)
            elif "error" in text or "cancel" in text:
                raise PushError(f"kernel {kid} failed on Kaggle: see `kaggle kernels logs {kid}`")
        if pending:
            if time.monotonic() > deadline:
                raise PushError(f"kernels still running after {timeout_s:.0f} s: {pending}")
            time.sleep(poll_s)


def push(
    out: str | os.PathLike = "build/kernels",
    *,
    only: Sequence[str] | None = None,
    package: bool = True,
    dry_run: bool = False,
    wait: bool = False,
    poll_s: float = 60.0,
    timeout_s: float = 12 * 3600.0,
) -> list[list[str]]:
    """Validate everything, check credentials, then upload. Returns the kernel ids pushed, by wave.

    only: kernel slugs or ids to push (default all). wait: after each wave, wait until its kernels
    have finished on Kaggle, so downstream kernels mount complete upstream outputs.
    """
    package_dir, kernels = discover(out)
    errors = validate_tree(out)
    if errors:
        raise PushError("nothing was uploaded; fix these bundles:\n" + "\n".join(map(str, errors)))
    if only:
        wanted = set(only)
        kernels = {k: p for k, p in kernels.items() if k in wanted or k.split("/")[1] in wanted}
        missing = wanted - {k for k in kernels} - {k.split("/")[1] for k in kernels}
        if missing:
            raise PushError(f"no bundle for {sorted(missing)} under {out}")
    waves = push_waves(kernels)
    if not dry_run and credentials_source() is None:
        raise PushError(NO_CREDENTIALS)
    cli = kaggle_cli()
    if package and package_dir is not None:
        from kaggle_utils import __version__

        _push_package(cli, package_dir, f"kaggle_utils {__version__}", dry_run)
    for i, wave in enumerate(waves):
        for kid in wave:
            cmd = push_command(cli, kernels[kid])
            _say(cmd)
            if dry_run:
                continue
            done = _run(cmd)
            if _failed(done):
                raise PushError(
                    f"pushing {kid} failed (exit {done.returncode}); later kernels not pushed"
                )
        if wait and i + 1 < len(waves):
            if dry_run:
                print(f"# wait until {', '.join(wave)} complete", flush=True)
            else:
                _wait_for(cli, wave, poll_s, timeout_s)
    return waves
