"""Papermill helpers: run a notebook with parameters into a target path, fail with the cell named.

Used by 04_stage_up (03 per stage) and by the batch runner. A failing cell becomes a
`NotebookExecutionError` whose message holds the notebook, the cell number, the first line of the
cell's source and the error; the executed notebook is kept at its target path for inspection.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

__all__ = [
    "NotebookExecutionError",
    "REPO_NOTEBOOKS",
    "execute_notebook",
    "ipc_engine_kwargs",
    "notebook_path",
]

REPO_NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# in the wheel the Kaggle kernels install (kernels.build copies them in): 04 runs 03 from here
PACKAGED_NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"


class NotebookExecutionError(RuntimeError):
    """A notebook cell raised; attributes: notebook, output, cell (index), ename, evalue, source."""

    def __init__(
        self,
        notebook: Path,
        output: Path,
        cell: int | None,
        ename: str,
        evalue: str,
        source: str = "",
    ):
        self.notebook, self.output, self.cell = notebook, output, cell
        self.ename, self.evalue, self.source = ename, evalue, source
        first = next(
            (ln for ln in source.splitlines() if ln.strip() and not ln.startswith("#")), ""
        )
        where = f"cell {cell}" + (f" (`{first.strip()[:80]}`)" if first else "")
        super().__init__(
            f"{notebook.name} failed in {where}: {ename}: {evalue}\n  executed notebook: {output}"
        )


def notebook_path(name: str) -> Path:
    """A notebook of this repository by name (e.g. "03_train_member.ipynb"), or an existing path.

    Falls back to notebooks bundled next to an installed package (Kaggle wheel) or the cwd.
    """
    path = Path(name)
    if path.is_file():
        return path
    bases = (REPO_NOTEBOOKS, PACKAGED_NOTEBOOKS, Path.cwd() / "notebooks", Path.cwd())
    for base in bases:
        if (base / path.name).is_file():
            return base / path.name
    tried = ", ".join(str(b.resolve()) for b in bases)
    raise FileNotFoundError(f"notebook {name} not found (looked in {tried})")


# a Unix socket path holds at most 104 bytes on macOS (108 on Linux), with "-<n>" appended per channel
_MAX_SOCKET_PATH = 100


def _ipc_kernel_manager() -> type | None:
    """A kernel manager whose kernel talks over Unix sockets instead of localhost TCP, or None
    where that is unavailable (Windows, or a temp folder too deep for a socket path).

    Over TCP every kernel's ipykernel logs "Kernel is running over TCP without encryption...",
    which a demo printed more than 30 times; over IPC there is nothing to encrypt and it says
    nothing. The sockets get a unique absolute path in the temp folder: the default ("kernel-ipc"
    in the cwd) would litter the notebook folder and collide between kernels started side by side.
    Both the connection file and the sockets are removed when the kernel shuts down.
    """
    import zmq
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    base = os.path.join(tempfile.gettempdir(), f"kaggle-utils-kernel-{uuid.uuid4().hex[:12]}")
    if not zmq.has("ipc") or len(base) + 3 > _MAX_SOCKET_PATH:
        return None

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _transport_ipc(self) -> str:
            return "ipc"

        @default("ip")
        def _ip_default(self) -> str:
            return base if self.transport == "ipc" else super()._ip_default()

    return IPCKernelManager


def ipc_engine_kwargs() -> dict[str, Any]:
    """Extra keyword arguments for `papermill.execute_notebook` that run the kernel over IPC (see
    `_ipc_kernel_manager`); empty where IPC is unavailable, so the kernel keeps TCP."""
    manager = _ipc_kernel_manager()
    return {} if manager is None else {"kernel_manager_class": manager}


def execute_notebook(
    notebook: str | os.PathLike,
    output: str | os.PathLike,
    parameters: dict[str, Any] | None = None,
    *,
    cwd: str | os.PathLike | None = None,
    kernel_name: str = "python3",
    log_output: bool = False,
    progress_bar: bool = False,
    execution_timeout: int | None = None,
) -> Path:
    """Execute `notebook` with `parameters` injected (papermill) and save it at `output`.

    Raises NotebookExecutionError naming the failing cell; other failures (missing kernel, dead
    kernel) propagate with the notebook named.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    notebook = notebook_path(str(notebook))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(
            str(notebook),
            str(output),
            parameters=dict(parameters or {}),
            kernel_name=kernel_name,
            log_output=log_output,
            progress_bar=progress_bar,
            cwd=str(cwd) if cwd else None,
            execution_timeout=execution_timeout,
            **ipc_engine_kwargs(),  # passed on to nbclient's NotebookClient (a trait)
        )
    except PapermillExecutionError as exc:
        raise NotebookExecutionError(
            notebook, output, exc.cell_index, exc.ename, exc.evalue, exc.source or ""
        ) from None
    except Exception as exc:
        raise RuntimeError(
            f"{notebook.name} could not run ({type(exc).__name__}: {exc}); output {output}"
        ) from exc
    return output
