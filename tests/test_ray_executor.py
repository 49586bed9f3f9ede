"""The pipeline on a Ray cluster: a local head on 127.0.0.1 that the tests start and stop, the same
run folder as the process pool's, and failures (a raising notebook, a dying worker) reported while
the other jobs finish. Without Ray installed only the "install the extra" message is tested."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest

from kaggle_utils.pipeline.plan import Job, Plan, Step
from kaggle_utils.pipeline.run import run_plan

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "params" / "demo" / "ensemble.yaml"
NO_RAY = "ray is not installed: pip install 'kaggle-utils[ray]' (make test installs it)"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kaggle_utils.pipeline", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_without_ray_the_message_names_the_extra(tmp_path):
    """`--executor ray` where Ray cannot be imported: one line naming the extra, exit 2, nothing
    written (the import is blocked the way a missing package fails: ImportError)."""
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from kaggle_utils.pipeline import main\n"
        "sys.exit(main(sys.argv[1:]))"
    )
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", code, str(DEMO), "--only", "02", "--executor", "ray"]
        + ["--data-dir", str(tmp_path), "--run-dir", str(run)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "--executor ray needs Ray" in line and "kaggle-utils[ray]" in line
    assert not run.exists()


def test_address_without_ray_executor_is_refused(tmp_path):
    result = _cli(str(DEMO), "--only", "02", "--address", "127.0.0.1:6379",
                  "--data-dir", str(tmp_path), "--run-dir", str(tmp_path / "run"))  # fmt: skip
    assert result.returncode == 2
    assert "--address and --max-retries go with --executor ray" in result.stderr


def test_an_address_where_no_head_answers_is_one_line(tmp_path):
    pytest.importorskip("ray", reason=NO_RAY)
    port = _free_port()  # nothing listens there
    result = _cli(str(DEMO), "--only", "02", "--executor", "ray", "--address", f"127.0.0.1:{port}",
                  "--data-dir", str(tmp_path), "--run-dir", str(tmp_path / "run"))  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"no Ray head answers at 127.0.0.1:{port} (--address)" in line
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------- on a local Ray head


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_pids(temp_dir: str) -> list[str]:
    """Ray processes of this head only (their command lines name its temp dir)."""
    out = subprocess.run(["pgrep", "-f", temp_dir], capture_output=True, text=True).stdout
    return [pid for pid in out.split() if pid != str(os.getpid())]


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` on 127.0.0.1 (2 CPUs, 100 MB object store, and 2 GPUs declared:
    Ray's GPUs are logical, so GPU assignment is tested without one); SIGTERM to that process
    stops every process it started, which is checked after."""
    pytest.importorskip("ray", reason=NO_RAY)
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    log = Path(temp_dir) / "head.log"
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
           f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2", "--num-gpus=2",
           "--object-store-memory=100000000", "--include-dashboard=false",
           f"--temp-dir={temp_dir}", "--disable-usage-stats"]  # fmt: skip
    with log.open("w") as out:
        head = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None, f"ray start exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"ray start did not come up: {log.read_text()}"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", env
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(10)
        deadline = time.monotonic() + 30
        while _ray_pids(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _ray_pids(temp_dir)
        if not left:
            shutil.rmtree(temp_dir, ignore_errors=True)  # its logs stay when something is left
        assert not left, f"Ray processes left behind: {left}"


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_run_folder_matches_the_process_pool(ray_head, small_synthetic, tmp_path):
    address, env = ray_head
    runs, procs = {}, {}
    for name, extra in (("pool", []), ("ray", ["--executor", "ray", "--address", address])):
        runs[name] = tmp_path / name
        cmd = [sys.executable, "-m", "kaggle_utils.pipeline", str(DEMO), "--only", "01,02",
               "--data-dir", str(small_synthetic), "--run-dir", str(runs[name]), *extra]  # fmt: skip
        # both at once: the test's time is mostly waiting on kernels
        procs[name] = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    for proc in procs.values():
        out = proc.communicate(timeout=240)[0]
        assert proc.returncode == 0, out
        assert "[ok    ] 01_eda" in out and "[ok    ] 02_split" in out
    pool, ray_ = _files(runs["pool"]), _files(runs["ray"])
    assert sorted(pool) == sorted(ray_), "the same files, at the same places"
    assert "folds.csv" in pool and pool["folds.csv"] == ray_["folds.csv"]
    assert not [f for f in ray_ if ".ray_probe" in f], "the shared-folder probe is removed"


def _probe_notebook(path: Path) -> Path:
    """A notebook that succeeds, raises, or kills the Ray worker running it (its kernel's parent),
    always or only on the first attempt."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('mode = "ok"\nmarker = ""\ndevice = None')
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "import os, signal, pathlib\n"
        'print("CUDA_VISIBLE_DEVICES=" + repr(os.environ.get("CUDA_VISIBLE_DEVICES")))\n'
        'if mode == "raise":\n'
        '    raise RuntimeError("failing on purpose")\n'
        'if mode == "crash" or (mode == "crash_once" and not pathlib.Path(marker).exists()):\n'
        "    pathlib.Path(marker or os.devnull).touch()\n"
        "    os.kill(os.getppid(), signal.SIGKILL)  # the worker process dies mid-task\n"
    )
    nb.cells = [params, body]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)
    return path


def _visible_devices(executed: Path) -> str:
    """What the probe printed of CUDA_VISIBLE_DEVICES (repr) in its executed notebook."""
    outputs = nbformat.read(executed, as_version=4).cells[-1].outputs
    (line,) = [x for o in outputs for x in o.get("text", "").splitlines() if "CUDA_" in x]
    return line.split("=", 1)[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_failed_and_crashed_jobs_are_reported_and_the_others_finish(ray_head, tmp_path):
    from kaggle_utils.pipeline.executors import RayExecutor

    address, _ = ray_head
    step = Step("04", str(_probe_notebook(tmp_path / "probe.ipynb")), per_member=True)
    run = tmp_path / "run"
    modes = ("ok", "raise", "crash_once", "crash")
    jobs = [
        Job(step, run / f"{m}.ipynb", {"mode": m, "marker": str(tmp_path / f"{m}.tried")}, m)
        for m in modes
    ]
    jobs.append(Job(step, run / "on_cpu.ipynb", {"device": "cpu"}, "on_cpu"))
    executor = RayExecutor(address, max_retries=1)
    try:
        assert executor.cluster_gpus == 2
        assert executor.num_gpus(jobs[0]) == 1 and executor.num_gpus(jobs[-1]) == 0
        results = {r.label: r for r in run_plan(Plan(run, jobs=jobs), executor=executor)}
    finally:
        executor.close()
    assert sorted(results) == sorted([*modes, "on_cpu"]), "every job reported, none lost"
    assert results["ok"].ok and results["on_cpu"].ok
    assert _visible_devices(run / "ok.ipynb") in ("'0'", "'1'"), "a training job gets one GPU"
    assert _visible_devices(run / "on_cpu.ipynb") == "''", "a --device cpu job sees none"
    assert not results["raise"].ok and "cell" in results["raise"].error
    assert "failing on purpose" in results["raise"].error
    assert results["crash_once"].ok, f"retried on a new worker: {results['crash_once'].error}"
    assert not results["crash"].ok and "after 1 retries" in results["crash"].error
    assert "\n" not in results["crash"].error
