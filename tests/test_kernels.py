"""Kaggle kernel bundles: build, offline validation (ours and the kaggle package's own push code path
with only the network replaced), push safety, and a built notebook run by papermill."""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from kaggle_utils.kernels import (
    PushError,
    build_kernels,
    kernel_problems,
    main,
    plan_kernels,
    push,
    validate_tree,
)
from kaggle_utils.kernels import upload as push_module
from kaggle_utils.kernels.build import NOTEBOOKS, build_package, wheel_command

REPO = Path(__file__).resolve().parents[1]
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}

# The parameters each notebook declares (contracts); stand-ins are used where a notebook is not
# in the checkout yet, the real notebooks everywhere else.
PARAMETERS = {
    "01": "data_dir = None\nsample_size = 16",
    "02": 'data_dir = None\nrun_dir = "runs/demo"\nn_folds = 5\nstratify = "make"\nseed = 0',
    "03": 'member_file = None\nstage = 0\nfold = 0\ndata_dir = None\nrun_dir = "runs/demo"\n'
    "init_checkpoint = None\ndevice = None\noverrides = None",
    "04": 'member_file = None\nfold = 0\ndata_dir = None\nrun_dir = "runs/demo"\ndevice = None',
    "05": 'ensemble_file = None\nrun_dir = "runs/demo"\ndata_dir = None',
    "06": 'ensemble_file = None\nrun_dir = "runs/demo"\ndata_dir = None\nlimit = None\n'
    "device = None\nsubmit_message = None",
}


def _stub_notebook(path: Path, step: str) -> None:
    nb = new_notebook(metadata={"kernelspec": KERNELSPEC})
    nb.cells = [
        new_code_cell("import sys"),
        new_code_cell(PARAMETERS[step], metadata={"tags": ["parameters"]}),
        new_code_cell("print(sorted(k for k in dir() if not k.startswith('_')))"),
    ]
    nbformat.write(nb, str(path))


@pytest.fixture(scope="module")
def notebook_dir(tmp_path_factory) -> Path:
    """The repo's notebooks, with stand-ins for those not written yet."""
    folder = tmp_path_factory.mktemp("notebooks")
    for step, name in NOTEBOOKS.items():
        real = REPO / "notebooks" / name
        if real.is_file():
            (folder / name).write_bytes(real.read_bytes())
        else:
            _stub_notebook(folder / name, step)
    return folder


def _write_params(root: Path, members=("m1", "m2_unet"), folds=(0, 1), weights=None) -> Path:
    demo = root / "params" / "tiny"
    demo.mkdir(parents=True, exist_ok=True)
    ens = {
        "name": "tiny",
        "members": [f"{m}.yaml" for m in members],
        "folds": list(folds),
        "data_dir": "data/tiny",
        "synthetic": {"n_train_cars": 4},
    }
    (demo / "ensemble.yaml").write_text(json.dumps(ens))
    for m in members:
        member = {
            "name": m,
            "model": {"arch": "unet", "encoder": "resnet18", "encoder_weights": weights},
            "n_folds": 3,
            "stages": [{"size": "64x96", "epochs": 1}, {"size": "128x192", "epochs": 1}],
        }
        (demo / f"{m}.yaml").write_text(json.dumps(member))
    return demo / "ensemble.yaml"


def _injected(bundle: Path) -> dict:
    """The parameters papermill injected into the bundle's notebook (its own metadata record)."""
    code = json.loads((bundle / "kernel-metadata.json").read_text())["code_file"]
    nb = nbformat.read(str(bundle / code), as_version=4)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert sum("injected-parameters" in t for t in tags) == 1
    # the injected cell comes right after the notebook's own parameters cell
    assert tags.index(["injected-parameters"]) == tags.index(["parameters"]) + 1
    return nb.metadata["papermill"]["parameters"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, notebook_dir) -> Path:
    """One full build (package wheel included) of a two-member, two-fold ensemble."""
    root = tmp_path_factory.mktemp("build")
    ensemble = _write_params(root)
    out = root / "kernels"
    build_kernels(ensemble, "alice", out, notebook_dir=notebook_dir)
    return out


# ------------------------------------------------------------------ the kaggle package's push path


@pytest.fixture
def kaggle_api(monkeypatch, tmp_path):
    """A real KaggleApi, authenticated with dummy keys; only the HTTP send is replaced by a fake
    that records each request the push would have sent."""
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", "0" * 32)
    monkeypatch.delenv("KAGGLE_API_TOKEN", raising=False)
    import requests
    from kaggle.api.kaggle_api_extended import KaggleApi

    sent: list[dict] = []

    def fake_send(session, request, **kwargs):
        body = json.loads(request.body)
        sent.append({"url": request.url, "body": body})
        response = requests.Response()
        response.status_code = 200
        response.headers["Content-Type"] = "application/json"
        slug = body.get("slug", "")
        response._content = json.dumps(
            {
                "ref": f"/code/{slug}",
                "url": f"https://www.kaggle.com/code/{slug}",
                "versionNumber": 1,
            }
        ).encode()
        response.url = request.url
        return response

    monkeypatch.setattr(requests.Session, "send", fake_send)
    api = KaggleApi()
    api.authenticate()
    api.sent = sent
    return api


def test_kaggle_push_accepts_every_built_bundle(built, kaggle_api):
    bundles = sorted(p for p in built.iterdir() if (p / "kernel-metadata.json").exists())
    assert len(bundles) == 2 + 2 * 2 + 2  # 01, 02, 04 per member and fold, 05, 06
    for bundle in bundles:
        meta = json.loads((bundle / "kernel-metadata.json").read_text())
        response = kaggle_api.kernels_push(str(bundle))
        assert response.version_number == 1
        request = kaggle_api.sent[-1]
        assert request["url"].endswith("/kernels.KernelsApiService/SaveKernel")
        body = request["body"]
        assert body["slug"] == meta["id"]
        assert body["newTitle"] == meta["title"]
        assert body["language"] == "python" and body["kernelType"] == "notebook"
        assert body["isPrivate"] is True
        assert body.get("enableInternet", False) is False  # stated false, not the CLI's default
        assert body.get("enableGpu", False) is meta["enable_gpu"]
        assert body["competitionDataSources"] == ["carvana-image-masking-challenge"]
        assert body["datasetDataSources"][0] == "alice/kaggle-utils-wheel"
        assert body.get("kernelDataSources", []) == meta["kernel_sources"]
        sent_nb = json.loads(body["text"])
        assert any("injected-parameters" in c["metadata"].get("tags", []) for c in sent_nb["cells"])
    assert len(kaggle_api.sent) == len(bundles)


BROKEN = {
    # field: (change to kernel-metadata.json, what the kaggle CLI says)
    "id": ({"id": "alice/abc"}, "at least five characters"),
    "enable_gpu": ({"enable_gpu": "yes"}, "Invalid boolean value"),
    "code_file": ({"code_file": "missing.ipynb"}, "Source file not found"),
    "language": ({"language": "julia"}, "valid language"),
    "kernel_type": ({"kernel_type": "lab"}, "valid kernel type"),
    "kernel_sources": ({"kernel_sources": ["alice"]}, "Kernel must be specified"),
    "dataset_sources": ({"dataset_sources": ["no-owner"]}, "Dataset must be specified"),
    "title": ({"title": "Tiny"}, "Title must be at least five characters"),
}


@pytest.mark.parametrize("field", sorted(BROKEN))
def test_broken_metadata_rejected_by_kaggle_and_by_us(built, kaggle_api, tmp_path, field):
    change, kaggle_says = BROKEN[field]
    bundle = tmp_path / "bundle"
    source = built / "carvana-tiny-02-split"
    bundle.mkdir()
    for f in source.iterdir():
        (bundle / f.name).write_bytes(f.read_bytes())
    meta = json.loads((bundle / "kernel-metadata.json").read_text())
    (bundle / "kernel-metadata.json").write_text(json.dumps({**meta, **change}))

    assert kaggle_api.kernels_push(str(source)).version_number == 1  # the original goes through
    sent = len(kaggle_api.sent)
    with pytest.raises(ValueError, match=kaggle_says):
        kaggle_api.kernels_push(str(bundle))
    assert len(kaggle_api.sent) == sent  # nothing sent

    problems = kernel_problems(bundle)
    assert [f for f, _ in problems] == [field], problems
    errors = validate_tree(bundle.parent)
    assert len(errors) == 1 and f"field '{field}'" in str(errors[0])


def test_non_json_notebook_and_numeric_flag_rejected(built, kaggle_api, tmp_path):
    source = next(p for p in built.iterdir() if p.name.endswith("-01-eda"))
    bundle = tmp_path / "b"
    bundle.mkdir()
    for f in source.iterdir():
        (bundle / f.name).write_bytes(f.read_bytes())
    meta = json.loads((bundle / "kernel-metadata.json").read_text())
    (bundle / meta["code_file"]).write_text("print('a script, not a notebook')")
    with pytest.raises(json.JSONDecodeError):
        kaggle_api.kernels_push(str(bundle))
    assert [f for f, _ in kernel_problems(bundle)] == ["code_file"]

    (bundle / meta["code_file"]).write_bytes((source / meta["code_file"]).read_bytes())
    (bundle / "kernel-metadata.json").write_text(json.dumps({**meta, "is_private": 1}))
    with pytest.raises((ValueError, TypeError)):  # the CLI trips over a number (a TypeError)
        kaggle_api.kernels_push(str(bundle))
    assert [f for f, _ in kernel_problems(bundle)] == ["is_private"]

    # stricter than the CLI: internet must be stated, the title must resolve to the slug
    del meta["enable_internet"]
    (bundle / "kernel-metadata.json").write_text(json.dumps({**meta, "title": "Something Else"}))
    assert sorted(f for f, _ in kernel_problems(bundle)) == ["enable_internet", "title"]
    long_title = "A Kernel Title Well Beyond The Fifty Characters Kaggle Takes"
    meta = {**meta, "enable_internet": False, "title": long_title, "id": "alice/x-" + "y" * 60}
    (bundle / "kernel-metadata.json").write_text(json.dumps(meta))
    assert kaggle_api.kernels_push(str(bundle)).version_number == 1  # the CLI lets it through
    assert [f for f, _ in kernel_problems(bundle)] == ["title"]


# ------------------------------------------------------------------ what the build writes


def test_bundles_metadata_and_parameters(built):
    names = sorted(p.name for p in built.iterdir() if p.is_dir())
    prefix = "carvana-tiny"
    members = [f"{prefix}-04-{m}-f{f}" for m in ("m1", "m2-unet") for f in (0, 1)]
    assert names == sorted(
        ["_package", f"{prefix}-01-eda", f"{prefix}-02-split", *members]
        + [f"{prefix}-05-ensemble", f"{prefix}-06-submit"]
    )
    assert validate_tree(built) == []
    meta = {n: json.loads((built / n / "kernel-metadata.json").read_text()) for n in names[1:]}
    for name, m in meta.items():
        assert m["id"] == f"alice/{name}" and m["code_file"] == f"{name}.ipynb"
        assert m["enable_internet"] is False and m["is_private"] is True
        # GPU where models run: training, 05 (re-predicts validation images), 06 (test set)
        assert m["enable_gpu"] is any(s in name for s in ("-04-", "-05-", "-06-"))
        assert m["competition_sources"] == ["carvana-image-masking-challenge"]
        assert m["dataset_sources"] == ["alice/kaggle-utils-wheel"]
    assert meta[f"{prefix}-01-eda"]["kernel_sources"] == []
    assert meta[members[0]]["kernel_sources"] == [f"alice/{prefix}-02-split"]
    assert meta[f"{prefix}-05-ensemble"]["kernel_sources"] == [
        f"alice/{prefix}-02-split",
        *[f"alice/{m}" for m in members],
    ]
    assert meta[f"{prefix}-06-submit"]["kernel_sources"][-1] == f"alice/{prefix}-05-ensemble"

    wheel_dir = "/kaggle/input/kaggle-utils-wheel"
    assert _injected(built / f"{prefix}-01-eda") == {"data_dir": None}
    # 02 gets the split settings the local pipeline passes (from the ensemble file)
    split = _injected(built / f"{prefix}-02-split")
    assert split.pop("data_dir") is None and split.pop("run_dir") == "runs/tiny"
    assert set(split) <= {"n_folds", "stratify", "seed"}
    assert _injected(built / f"{prefix}-04-m2-unet-f1") == {
        "data_dir": None,
        "run_dir": "runs/tiny",
        "member_file": f"{wheel_dir}/tiny__m2_unet.yaml",
        "fold": 1,
    }
    assert (
        _injected(built / f"{prefix}-06-submit")["ensemble_file"]
        == f"{wheel_dir}/tiny__ensemble.yaml"
    )


def test_package_dataset_holds_wheel_and_params(built):
    import zipfile

    import yaml

    pkg = built / "_package"
    meta = json.loads((pkg / "dataset-metadata.json").read_text())
    assert meta["id"] == "alice/kaggle-utils-wheel" and len(meta["licenses"]) == 1
    (wheel,) = pkg.glob("kaggle_utils-*-py3-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "kaggle_utils/kernels/__init__.py" in names and "kaggle_utils/environment.py" in names
    assert not any("__pycache__" in n for n in names)
    # the bootstrap cell's pattern finds it once the dataset is mounted under /kaggle/input/<slug>
    assert re.fullmatch(r"kaggle_utils-.*\.whl", wheel.name)
    ens = yaml.safe_load((pkg / "tiny__ensemble.yaml").read_text())
    assert ens["members"] == ["tiny__m1.yaml", "tiny__m2_unet.yaml"]
    assert ens["data_dir"] is None and "synthetic" not in ens
    # the shipped ensemble loads as is: members resolve next to it, as in the dataset mount
    from kaggle_utils.config import load_ensemble

    assert [p.name for p in load_ensemble(pkg / "tiny__ensemble.yaml").member_paths()] == [
        "tiny__m1.yaml",
        "tiny__m2_unet.yaml",
    ]


def test_package_licence_is_what_kaggle_takes_for_mit(built, kaggle_api):
    """Kaggle has no MIT dataset licence: `other` ("specified in description") is the name the
    kaggle CLI's own check takes, the description says MIT, and LICENSE ships beside the wheel."""
    import zipfile

    pkg = built / "_package"
    meta = json.loads((pkg / "dataset-metadata.json").read_text())
    ((licence,),) = [[lic["name"] for lic in meta["licenses"]]]
    assert licence in kaggle_api.valid_dataset_license_names
    with pytest.raises(ValueError, match="Invalid license"):  # the CLI's code refuses "MIT"
        kaggle_api.dataset_list_with_response(license_name="MIT")
    sent = len(kaggle_api.sent)
    kaggle_api.dataset_list_with_response(license_name=licence)  # ours passes to the request
    assert len(kaggle_api.sent) == sent + 1
    assert "License: MIT" in meta["description"]
    assert (pkg / "LICENSE").read_text() == (REPO / "LICENSE").read_text()
    assert "Copyright (c) 2026 kaggle-utils contributors" in (REPO / "LICENSE").read_text()
    (wheel,) = pkg.glob("kaggle_utils-*.whl")
    assert any(n.endswith("/LICENSE") for n in zipfile.ZipFile(wheel).namelist())


def test_build_prints_the_wheel_command_it_runs(tmp_path, capsys):
    out = tmp_path / "my kernels"  # a space: the printed command must still paste as one
    pkg = build_package(out, "alice")
    lines = capsys.readouterr().out.splitlines()
    (command,) = [line[2:] for line in lines if line.startswith("$ ")]
    argv = shlex.split(command)
    assert argv == wheel_command(pkg) and argv[0] == sys.executable
    assert argv[argv.index("-w") + 1] == str(pkg.resolve())
    assert list(pkg.glob("kaggle_utils-*.whl"))  # what that command built
    (cwd,) = [line for line in lines if line.startswith("# in ")]
    assert "clean copy of" in cwd and "$" not in cwd


def test_cli_build_prints_a_push_command_that_runs(tmp_path, capsys, notebook_dir):
    ensemble = _write_params(tmp_path, members=("m1",), folds=(0,))
    out = tmp_path / "built kernels"
    args = ["build", str(ensemble), "--owner", "alice", "--out", str(out), "--no-package"]
    assert main([*args, "--notebooks", str(notebook_dir)]) == 0
    (command,) = [line[2:] for line in capsys.readouterr().out.splitlines() if line[:2] == "$ "]
    argv = shlex.split(command)
    assert argv[:5] == ["python", "-m", "kaggle_utils.kernels", "push", str(out)]
    done = subprocess.run(
        [sys.executable, *argv[1:], "--dry-run"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "kernels push -p" in done.stdout


def test_per_stage_kernels_chain_checkpoints(tmp_path, notebook_dir):
    ensemble = _write_params(tmp_path, members=("m1",), folds=(0,))
    out = tmp_path / "k"
    build_kernels(ensemble, "alice", out, notebook_dir=notebook_dir, per_stage=True, package=False)
    s1, s2 = out / "carvana-tiny-03-m1-f0-s1", out / "carvana-tiny-03-m1-f0-s2"
    assert _injected(s1)["init_checkpoint"] is None and _injected(s1)["stage"] == 0
    assert _injected(s2)["stage"] == 1
    # the previous stage's output as Kaggle mounts it (03 opens init_checkpoint as given)
    assert _injected(s2)["init_checkpoint"] == (
        "/kaggle/input/carvana-tiny-03-m1-f0-s1/runs/tiny/m1/s1_64x96/best.pt"
    )
    meta = json.loads((s2 / "kernel-metadata.json").read_text())
    assert meta["kernel_sources"] == [
        "alice/carvana-tiny-02-split",
        "alice/carvana-tiny-03-m1-f0-s1",
    ]
    assert validate_tree(out) == []
    # a rebuild without per_stage removes the now stale stage bundles
    build_kernels(ensemble, "alice", out, notebook_dir=notebook_dir, package=False)
    assert not s1.exists() and (out / "carvana-tiny-04-m1-f0").is_dir()


def test_build_errors_name_the_problem(tmp_path, notebook_dir):
    ensemble = _write_params(tmp_path, members=("m1",), folds=(0,))
    with pytest.raises(ValueError, match="--owner"):
        build_kernels(ensemble, "Alice Smith", tmp_path / "k", notebook_dir=notebook_dir)
    # weights read from a Kaggle dataset that is not attached
    weights = _write_params(tmp_path / "w", weights="/kaggle/input/r34-weights/resnet34.pth")
    with pytest.raises(ValueError, match=r"model\.encoder_weights.*--dataset OWNER/r34-weights"):
        plan_kernels(weights)
    plan = plan_kernels(weights, datasets=["bob/r34-weights"])
    train = [k for k in plan.kernels if k.step == "04"]
    assert train and all(k.datasets == ["bob/r34-weights"] for k in train)
    assert all(k.datasets == [] for k in plan.kernels if k.step != "04")
    # a notebook that lacks a parameter the kernel needs
    broken = tmp_path / "nb"
    broken.mkdir()
    for name in NOTEBOOKS.values():
        (broken / name).write_bytes((notebook_dir / name).read_bytes())
    nb = new_notebook(metadata={"kernelspec": KERNELSPEC})
    nb.cells = [new_code_cell("ensemble_file = None", metadata={"tags": ["parameters"]})]
    nbformat.write(nb, str(broken / NOTEBOOKS["06"]))
    with pytest.raises(ValueError, match=r"06_submit\.ipynb: no parameter 'data_dir', 'run_dir'"):
        build_kernels(ensemble, "alice", tmp_path / "k2", notebook_dir=broken, package=False)
    assert not (tmp_path / "k2").exists()  # checked before anything is written


@pytest.mark.parametrize("ensemble", ["params/demo/ensemble.yaml", "params/carvana/ensemble.yaml"])
def test_project_ensembles_build_valid_bundles(ensemble, tmp_path, notebook_dir, kaggle_api):
    path = REPO / ensemble
    if not path.is_file():
        pytest.skip(f"{ensemble} not in this checkout yet")
    out = tmp_path / "kernels"
    built = build_kernels(path, "alice", out, notebook_dir=notebook_dir, package=False)
    assert validate_tree(out) == []
    for bundle in built:
        assert kaggle_api.kernels_push(str(bundle)).version_number == 1
    assert len(kaggle_api.sent) == len(built)


# ------------------------------------------------------------------ push


def _no_credentials(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "nohome"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "noconfig"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "noxdg"))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)


def test_push_without_credentials_stops_before_any_upload(built, monkeypatch, tmp_path, capsys):
    _no_credentials(monkeypatch, tmp_path)

    def no_upload(cmd):
        raise AssertionError(f"ran {cmd} without credentials")

    monkeypatch.setattr(push_module, "_run", no_upload)
    with pytest.raises(PushError, match="no Kaggle credentials found, nothing was uploaded"):
        push(built)
    assert main(["push", str(built)]) == 2
    assert "kaggle.json" in capsys.readouterr().err


def test_push_refuses_invalid_bundles(built, tmp_path, monkeypatch):
    out = tmp_path / "copy"
    for src in built.iterdir():
        if src.is_dir():
            (out / src.name).mkdir(parents=True)
            for f in src.iterdir():
                (out / src.name / f.name).write_bytes(f.read_bytes())
    bad = next(p for p in out.iterdir() if p.name.endswith("-05-ensemble"))
    meta = json.loads((bad / "kernel-metadata.json").read_text())
    (bad / "kernel-metadata.json").write_text(json.dumps({**meta, "enable_gpu": "maybe"}))
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", "x")
    monkeypatch.setattr(push_module, "_run", lambda cmd: pytest.fail(f"uploaded {cmd}"))
    with pytest.raises(PushError, match="field 'enable_gpu'"):
        push(out)


def test_push_runs_the_cli_upstream_first(built, monkeypatch, tmp_path):
    """The real subprocess path, with a stand-in `kaggle` program that logs its arguments."""
    log = tmp_path / "calls.jsonl"
    fake = tmp_path / "kaggle"
    fake.write_text(
        "import json, sys\n"
        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "if sys.argv[1:3] == ['datasets', 'status']: print('ready')\n"
        "elif sys.argv[1:3] == ['kernels', 'status']: print(sys.argv[3] + ' has status \"complete\"')\n"
        "else: print('Kernel version 1 successfully pushed.')\n"
    )
    monkeypatch.setattr(push_module, "kaggle_cli", lambda: [sys.executable, str(fake)])
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", "x")
    waves = push(built, wait=True, poll_s=0)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls[:3] == [
        ["datasets", "status", "alice/kaggle-utils-wheel"],
        ["datasets", "version", "-p", str(built / "_package"), "-m", calls[1][-1]],
        ["datasets", "status", "alice/kaggle-utils-wheel"],
    ]
    pushed = [Path(c[3]).name for c in calls if c[:2] == ["kernels", "push"]]
    order = {name: i for i, name in enumerate(pushed)}
    assert len(pushed) == 8 and [len(w) for w in waves] == [2, 4, 1, 1]
    assert max(order[n] for n in pushed if "-04-" in n) < order["carvana-tiny-05-ensemble"]
    assert order["carvana-tiny-02-split"] < min(order[n] for n in pushed if "-04-" in n)
    assert pushed[-1] == "carvana-tiny-06-submit"
    # each wave was waited for before the next was pushed
    first_status = next(i for i, c in enumerate(calls) if c[:2] == ["kernels", "status"])
    assert calls[first_status][2] in ("alice/carvana-tiny-01-eda", "alice/carvana-tiny-02-split")


def test_credentials_sources(monkeypatch, tmp_path):
    from kaggle_utils.kernels import credentials_source

    _no_credentials(monkeypatch, tmp_path)
    assert credentials_source() is None
    config = tmp_path / "noconfig"
    config.mkdir()
    (config / "kaggle.json").write_text(json.dumps({"username": "alice", "key": "k"}))
    assert credentials_source() == str(config / "kaggle.json")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "tok")
    assert credentials_source() == "KAGGLE_API_TOKEN"


# ------------------------------------------------------------------ on Kaggle: paths


def test_environment_finds_upstream_outputs(monkeypatch, tmp_path):
    from kaggle_utils import environment

    inp, work = tmp_path / "input", tmp_path / "working"
    ckpt = inp / "carvana-tiny-03-m1-f0-s1" / "runs" / "tiny" / "m1" / "s1_64x96" / "best.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    nested = inp / "notebooks" / "alice" / "carvana-tiny-02-split" / "runs" / "tiny"
    nested.mkdir(parents=True)
    work.mkdir()
    monkeypatch.setattr(environment, "KAGGLE_INPUT", inp)
    monkeypatch.setattr(environment, "KAGGLE_WORKING", work)
    rel = "runs/tiny/m1/s1_64x96/best.pt"
    assert environment.find_input(rel) == ckpt
    assert environment.resolve_run_dir("runs/tiny") == work / "runs" / "tiny"
    assert environment.run_dir_candidates("runs/tiny") == [
        work / "runs" / "tiny",
        inp / "carvana-tiny-03-m1-f0-s1" / "runs" / "tiny",
        nested,
    ]
    (work / rel).parent.mkdir(parents=True)
    (work / rel).write_bytes(b"y")
    assert environment.find_input(rel) == work / rel  # this kernel's own output wins
    monkeypatch.setattr(environment, "KAGGLE_INPUT", tmp_path / "absent")
    assert environment.find_input(rel) == Path(rel)  # not on Kaggle: as given


# ------------------------------------------------------------------ a built notebook, executed


def _stream_text(nb) -> list[str]:
    return [
        "".join(o.get("text", "") for o in c.get("outputs", []) if o.get("output_type") == "stream")
        for c in nb.cells
        if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])
    ]


@pytest.mark.slow
def test_built_eda_notebook_runs_like_the_local_run(small_synthetic, tmp_path, notebook_dir):
    """The bundle's notebook, run by papermill as Kaggle would (data auto-detected under a
    simulated /kaggle/input, cwd /kaggle/working), prints what the local papermill run prints."""
    import papermill as pm

    if not (REPO / "notebooks" / NOTEBOOKS["01"]).is_file():
        pytest.skip("notebooks/01_eda.ipynb not in this checkout yet")
    ensemble = _write_params(tmp_path, members=("m1",), folds=(0,))
    out = tmp_path / "kernels"
    build_kernels(ensemble, "alice", out, notebook_dir=notebook_dir, package=False)
    bundle = out / "carvana-tiny-01-eda"

    # local run: the repo notebook, data_dir given
    local = pm.execute_notebook(
        str(REPO / "notebooks" / NOTEBOOKS["01"]),
        str(tmp_path / "local.ipynb"),
        parameters={"data_dir": str(small_synthetic), "sample_size": 2},
        kernel_name="python3",
        progress_bar=False,
        cwd=str(REPO),
    )

    # "Kaggle" run: the bundle notebook untouched but for sample_size; data found by auto-detection
    inp, work = tmp_path / "input", tmp_path / "working"
    inp.mkdir()
    work.mkdir()
    (inp / "carvana-image-masking-challenge").symlink_to(small_synthetic, target_is_directory=True)
    env = {
        "KAGGLE_UTILS_KAGGLE_INPUT": str(inp),
        "KAGGLE_UTILS_KAGGLE_WORKING": str(work),
        "KAGGLE_UTILS_DATA": "",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    del os.environ["KAGGLE_UTILS_DATA"]
    try:
        code = json.loads((bundle / "kernel-metadata.json").read_text())["code_file"]
        nb = nbformat.read(str(bundle / code), as_version=4)
        injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
        assert "data_dir = None" in injected.source
        injected.source += (
            "\nsample_size = 2\n"  # keep the test small; the data stays auto-detected
        )
        kaggle = pm.execute_notebook(
            nb,
            str(tmp_path / "kaggle.ipynb"),
            kernel_name="python3",
            progress_bar=False,
            cwd=str(work),
        )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def normalise(texts: list[str], root: Path) -> list[str]:
        return [t.replace(str(root), "<data>") for t in texts]

    local_out = normalise(_stream_text(local), small_synthetic)
    kaggle_out = normalise(_stream_text(kaggle), inp / "carvana-image-masking-challenge")
    assert any("train images" in t for t in kaggle_out)
    assert kaggle_out == local_out

    def kinds(nb) -> list[list[str]]:
        return [[o.output_type for o in c.get("outputs", [])] for c in nb.cells]

    assert kinds(kaggle) == kinds(local)


def test_cli_build_dry_run_and_errors(tmp_path, capsys):
    ensemble = _write_params(tmp_path, members=("m1",), folds=(0,))
    assert main(["build", str(ensemble), "--owner", "alice", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "carvana-tiny-04-m1-f0" in out and "04_stage_up.ipynb  [gpu]" in out
    assert "member_file = '/kaggle/input/kaggle-utils-wheel/tiny__m1.yaml'" in out
    assert not (tmp_path / "build").exists()
    long_prefix = "carvana-" + "x" * 40
    assert main(["build", str(ensemble), "--owner", "alice", "--prefix", long_prefix]) == 2
    assert "longer than 50 characters" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "nothing")]) == 2


# ------------------------------------------------------------------ accelerators


def test_broken_accelerator_rejected_with_the_list(tmp_path, built):
    import yaml

    ensemble = _write_params(tmp_path, members=("m1",), folds=(0,))
    raw = yaml.safe_load(ensemble.read_text())
    ensemble.write_text(json.dumps({**raw, "accelerator": "NvidiaTeslaT5"}))
    with pytest.raises(
        ValueError, match=r"ensemble\.yaml: key 'accelerator': 'NvidiaTeslaT5'"
    ) as e:
        plan_kernels(ensemble)
    assert "did you mean 'NvidiaTeslaT4'" in str(e.value) and "NvidiaH100" in str(e.value)
    assert not (tmp_path / "build").exists()
    # a bundle edited by hand: the validator names machine_shape
    bundle = tmp_path / "bundle"
    source = built / "carvana-tiny-05-ensemble"
    bundle.mkdir()
    for f in source.iterdir():
        (bundle / f.name).write_bytes(f.read_bytes())
    meta = json.loads((bundle / "kernel-metadata.json").read_text())
    (bundle / "kernel-metadata.json").write_text(json.dumps({**meta, "machine_shape": "T4x2"}))
    problems = kernel_problems(bundle)
    assert [f for f, _ in problems] == ["machine_shape"] and "NvidiaTeslaT4" in problems[0][1]


def test_machine_shape_written_and_passed_to_push(built, kaggle_api, tmp_path):
    metas = {
        p.name: json.loads((p / "kernel-metadata.json").read_text())
        for p in built.iterdir()
        if (p / "kernel-metadata.json").exists()
    }
    for name, meta in metas.items():
        if any(s in name for s in ("-01-", "-02-")):
            assert "machine_shape" not in meta and meta["enable_gpu"] is False
        else:
            assert meta["machine_shape"] == "NvidiaTeslaT4" and meta["enable_gpu"] is True
    # the kaggle CLI's own push sends it as the session's machine shape
    kaggle_api.kernels_push(str(built / "carvana-tiny-06-submit"))
    assert kaggle_api.sent[-1]["body"]["machineShape"] == "NvidiaTeslaT4"
    done = subprocess.run(
        [sys.executable, "-m", "kaggle_utils.kernels", "push", str(built), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    pushes = [line for line in done.stdout.splitlines() if " kernels push -p " in line]
    assert len(pushes) == len(metas)
    for line in pushes:
        argv = shlex.split(line[2:])
        name = Path(argv[argv.index("-p") + 1]).name
        shape = metas[name].get("machine_shape")
        assert (argv[argv.index("--accelerator") + 1] if shape else None) == shape, line
        assert ("--accelerator" in argv) is bool(shape)


def test_p100_warns_and_t4x2_trains_on_both_gpus(tmp_path, notebook_dir, capsys):
    import yaml

    from kaggle_utils.config import load_member

    ensemble = _write_params(tmp_path, members=("m1", "m2_unet"), folds=(0,))
    m2 = ensemble.parent / "m2_unet.yaml"
    m2.write_text(json.dumps({**json.loads(m2.read_text()), "accelerator": "NvidiaTeslaP100"}))
    plan = plan_kernels(ensemble, per_stage=True)
    (warning,) = [w for w in plan.warnings if "P100" in w]
    assert warning.startswith(f"{m2}: key 'accelerator'") and "sm_60" in warning
    shapes = {k.slug: k.machine_shape for k in plan.kernels}
    assert shapes["carvana-tiny-03-m2-unet-f0-s1"] == "NvidiaTeslaP100"
    assert shapes["carvana-tiny-03-m1-f0-s1"] == "NvidiaTeslaT4"
    assert shapes["carvana-tiny-02-split"] is None
    params = {k.slug: k.parameters for k in plan.kernels}
    assert params["carvana-tiny-03-m1-f0-s2"]["devices"] == 2  # T4 x2: both GPUs
    assert "devices" not in params["carvana-tiny-03-m2-unet-f0-s1"]  # one P100
    # 04 reads the member file: the shipped copy says devices 2 and hashes the same
    shipped = tmp_path / "tiny__m1.yaml"
    shipped.write_text(plan.params_files["tiny__m1.yaml"])
    assert yaml.safe_load(shipped.read_text())["devices"] == 2
    original = load_member(ensemble.parent / "m1.yaml")
    assert load_member(shipped).devices == 2
    assert load_member(shipped).params_hash(1) == original.params_hash(1)
    # a member that states its devices keeps them; the build prints the P100 warning
    m1 = ensemble.parent / "m1.yaml"
    m1.write_text(json.dumps({**json.loads(m1.read_text()), "devices": 1}))
    plan = plan_kernels(ensemble)
    assert "devices" not in yaml.safe_load(plan.params_files["tiny__m1.yaml"]) or (
        yaml.safe_load(plan.params_files["tiny__m1.yaml"])["devices"] == 1
    )
    build_kernels(ensemble, "alice", tmp_path / "k", notebook_dir=notebook_dir, package=False)
    assert "sm_60" in capsys.readouterr().err


# ------------------------------------------------------------------ sharded test prediction


def test_sharded_submit_builds_one_kernel_per_shard_and_a_merge(tmp_path, notebook_dir):
    ensemble = _write_params(tmp_path, members=("m1",), folds=(0,))
    ens = json.loads(ensemble.read_text())
    ensemble.write_text(json.dumps({**ens, "n_shards": 3, "accelerator": "NvidiaTeslaP100"}))
    out = tmp_path / "k"
    build_kernels(ensemble, "alice", out, notebook_dir=notebook_dir, package=False)
    assert validate_tree(out) == []
    plan = plan_kernels(ensemble)
    submit = [k for k in plan.kernels if k.step == "06"]
    shards = [f"carvana-tiny-06-submit-shard-{i}-of-3" for i in range(3)]
    assert [k.slug for k in submit] == [*shards, "carvana-tiny-06-submit"]
    upstream = ["alice/carvana-tiny-04-m1-f0", "alice/carvana-tiny-05-ensemble"]
    for i, slug in enumerate(shards):
        assert _injected(out / slug)["shard"] == i and _injected(out / slug)["n_shards"] == 3
        meta = json.loads((out / slug / "kernel-metadata.json").read_text())
        assert meta["kernel_sources"] == upstream
        assert meta["machine_shape"] == "NvidiaTeslaP100"  # the ensemble's, as 06's
    merge = out / "carvana-tiny-06-submit"
    injected = _injected(merge)
    assert injected["shard"] is None and injected["n_shards"] == 3
    meta = json.loads((merge / "kernel-metadata.json").read_text())
    # the merge loads the ensemble (members, 05) and reads every shard kernel's output
    assert meta["kernel_sources"] == upstream + [f"alice/{s}" for s in shards]
    # the shard kernels run before the merge kernel that reads them (push order)
    order = json.loads((out / "carvana-tiny.manifest.json").read_text())["kernels"]
    assert order.index("carvana-tiny-06-submit") > max(order.index(s) for s in shards)
    # without n_shards: one 06 kernel, as before; the shard bundles are removed as stale
    ensemble.write_text(json.dumps(ens))
    build_kernels(ensemble, "alice", out, notebook_dir=notebook_dir, package=False)
    assert not any((out / s).exists() for s in shards)
    assert "shard" not in _injected(merge)


def test_merge_finds_shards_in_upstream_kernel_outputs(tmp_path, small_synthetic):
    """Each shard kernel's /kaggle/working is mounted under the merge kernel's /kaggle/input; the
    merge (the shards CLI, with a fake /kaggle/input and /kaggle/working) finds all of them."""
    from _tiny_run import tiny_checkpoint

    from kaggle_utils import inference as I
    from kaggle_utils import predict as P
    from kaggle_utils.layout import find_data

    members = I.load_members([tiny_checkpoint(tmp_path / "ckpt" / "best.pt", size=(64, 96))])
    data = find_data(small_synthetic)
    kw = {"batch_size": 1, "num_workers": 0, "chunk_size": 4, "progress": False}
    whole = P.predict_submission(members, data, tmp_path / "whole" / "submission.csv.gz", **kw)
    inp, work = tmp_path / "input", tmp_path / "working"
    for i in range(3):  # shard i as kernel <prefix>-06-submit-shard-i-of-3 left it
        run = inp / f"carvana-tiny-06-submit-shard-{i}-of-3" / "runs" / "tiny"
        P.predict_submission(members, data, run / "submission.csv.gz", shard=i, n_shards=3, **kw)
    run = work / "runs" / "tiny"
    run.mkdir(parents=True)
    env = {
        **os.environ,
        "KAGGLE_UTILS_KAGGLE_INPUT": str(inp),
        "KAGGLE_UTILS_KAGGLE_WORKING": str(work),
    }
    cmd = [sys.executable, "-m", "kaggle_utils.shards"]
    status = subprocess.run(
        [*cmd, "status", str(run), "--shards", "3"], capture_output=True, text=True, env=env
    )
    assert status.stdout.count(": done") == 3 and str(inp) in status.stdout
    args = ["merge", str(run), "--shards", "3", "--data-dir", str(small_synthetic)]
    merged = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env)
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert gzip.decompress((run / "submission.csv.gz").read_bytes()) == gzip.decompress(
        whole.path.read_bytes()
    )
    assert not (run / "submission_shards").exists()  # read in place, nothing copied
    # a shard kernel whose output is missing is named
    import shutil

    shutil.rmtree(inp / "carvana-tiny-06-submit-shard-1-of-3")
    merged = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env)
    assert merged.returncode == 1 and "shard 1 of 3 is missing" in merged.stdout
    assert f"nor in any kernel output under {inp}" in merged.stdout
