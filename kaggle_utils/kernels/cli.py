"""The kaggle CLI: where it is, whether it has credentials, and a competition submission.

One place for what the kernel upload (`upload.push`) and 06's submit step both need, so both
find the same executable and the same credentials, and both say the same thing when one is
missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from kaggle_utils.constants import COMPETITION

__all__ = [
    "NO_CREDENTIALS",
    "credentials_source",
    "kaggle_cli",
    "kaggle_cli_installed",
    "kaggle_credentials",
    "kaggle_submit",
]

NO_CREDENTIALS = (
    "no Kaggle credentials found, nothing was uploaded. Create an API token on kaggle.com "
    "(Settings -> API -> Create New Token) and save it as ~/.kaggle/kaggle.json (chmod 600), or "
    "export KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN)."
)


def _config_dirs() -> list[Path]:
    """Where the kaggle CLI looks for kaggle.json (KaggleApi.config_dir)."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return [Path(os.environ["KAGGLE_CONFIG_DIR"])]
    home = Path.home()
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    return [home / ".kaggle", xdg / "kaggle"]


def credentials_source() -> str | None:
    """Where the kaggle CLI would find credentials, or None (then every upload would fail)."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    for folder in _config_dirs():
        config = folder / "kaggle.json"
        try:
            data = json.loads(config.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("username") and data.get("key"):
            return str(config)
    kaggle_home = Path.home() / ".kaggle"
    for name in ("access_token", "access_token.txt", "credentials.json"):
        token = kaggle_home / name
        if token.is_file() and token.stat().st_size > 0:
            return str(token)
    return None


def kaggle_credentials() -> bool:
    """Whether the kaggle CLI would find credentials (env vars, kaggle.json or an access token)."""
    return credentials_source() is not None


def kaggle_cli() -> list[str]:
    """The kaggle CLI beside this Python (the venv's), else on PATH, else `python -m kaggle`."""
    beside = Path(sys.executable).with_name("kaggle")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("kaggle")
    return [found] if found else [sys.executable, "-m", "kaggle"]


def kaggle_cli_installed() -> bool:
    """Whether `kaggle_cli()` would run something: an executable, or the package for `-m`."""
    cli = kaggle_cli()
    return cli[0] != sys.executable or importlib.util.find_spec("kaggle") is not None


def kaggle_submit(
    path: str | os.PathLike, message: str, competition: str = COMPETITION, dry_run: bool = False
) -> bool:
    """`kaggle competitions submit -c … -f … -m …` when the CLI and credentials exist.

    Returns True when submitted; prints a clear reason (and the command to submit by hand) and
    returns False when it cannot, so a notebook without credentials still finishes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"submission file not found: {path}")
    by_hand = f"  kaggle competitions submit -c {competition} -f {path} -m {message!r}"
    if not kaggle_cli_installed():
        print(
            "not submitting: the kaggle CLI is not installed (pip install kaggle); then:\n"
            + by_hand,
            flush=True,
        )
        return False
    if not kaggle_credentials():
        print(
            "not submitting: no Kaggle credentials (put kaggle.json in ~/.kaggle/ or set "
            "KAGGLE_USERNAME and KAGGLE_KEY); submit by hand with:\n" + by_hand,
            flush=True,
        )
        return False
    cmd = [*kaggle_cli(), "competitions", "submit", "-c", competition, "-f", str(path)]
    cmd += ["-m", message]
    print("$", " ".join(cmd), flush=True)
    if dry_run:
        return False
    subprocess.run(cmd, check=True)
    return True
