"""execute_notebook for real on a two-cell notebook: parameters injected, and the kernel runs over IPC
so ipykernel's "running over TCP without encryption" warning is not printed once per notebook."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import nbformat
import pytest

from kaggle_utils import notebook

WARNING = "without encryption"


def _tiny_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    params = nbformat.v4.new_code_cell("x = 1")
    params.metadata["tags"] = ["parameters"]
    probe = nbformat.v4.new_code_cell(
        "from ipykernel.kernelapp import IPKernelApp\n"
        "print(x + 1, IPKernelApp.instance().transport)"
    )
    nb.cells = [params, probe]
    nbformat.write(nb, path)
    return path


def _printed(path: Path) -> str:
    cell = json.loads(path.read_text())["cells"][-1]
    return "".join("".join(out.get("text", "")) for out in cell["outputs"])


def _sockets_left() -> list[Path]:
    return sorted(Path(tempfile.gettempdir()).glob("kaggle-utils-kernel-*"))


@pytest.mark.timeout(300)
def test_kernel_runs_over_ipc_without_the_tcp_warning(tmp_path, capfd, caplog, monkeypatch):
    src = _tiny_notebook(tmp_path / "tiny.ipynb")
    before = _sockets_left()
    caplog.set_level(logging.DEBUG)
    out = notebook.execute_notebook(src, tmp_path / "out.ipynb", {"x": 41}, cwd=tmp_path)
    err = capfd.readouterr()  # fd level: the kernel process writes to the inherited stderr
    assert _printed(out).split() == ["42", "ipc"]
    assert WARNING not in err.err + err.out + caplog.text
    assert _sockets_left() == before  # sockets and connection file removed at shutdown

    # the control: over TCP the same capture does see ipykernel's warning
    monkeypatch.setattr(notebook, "_ipc_kernel_manager", lambda: None)
    out = notebook.execute_notebook(src, tmp_path / "tcp.ipynb", {"x": 1}, cwd=tmp_path)
    assert _printed(out).split() == ["2", "tcp"]
    assert WARNING in capfd.readouterr().err
