"""Relative paths mean the project root's folders wherever a kernel starts (notebooks/ or elsewhere):
run_dir, data_dir, member and ensemble files; on Kaggle nothing changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kaggle_utils import environment
from kaggle_utils.config import ConfigError, load_ensemble, load_member
from kaggle_utils.layout import find_data
from kaggle_utils.runs import member_names


@pytest.fixture()
def project(tmp_path, repo_root, small_synthetic, monkeypatch):
    """A project as `make demo` leaves it: params/demo, data/synthetic, notebooks/, runs/demo."""
    root = tmp_path / "project"
    shutil.copytree(repo_root / "params" / "demo", root / "params" / "demo")
    shutil.copytree(small_synthetic, root / "data" / "synthetic")
    (root / "notebooks").mkdir()
    (root / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.delenv("KAGGLE_UTILS_DATA", raising=False)
    monkeypatch.delenv(environment.PROJECT_ENV, raising=False)
    monkeypatch.setattr(environment, "KAGGLE_INPUT", tmp_path / "no-kaggle-input")
    monkeypatch.setattr(environment, "KAGGLE_WORKING", tmp_path / "no-kaggle-working")
    return root


def test_project_root_is_found_from_notebooks_and_by_env(project, tmp_path, monkeypatch):
    monkeypatch.chdir(project / "notebooks")
    assert environment.project_root() == project.resolve()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert environment.project_root() is None
    monkeypatch.setenv(environment.PROJECT_ENV, str(project))
    assert environment.project_root() == project.resolve()


def test_run_dir_from_notebooks_lands_at_the_project_root(project, tmp_path, monkeypatch):
    monkeypatch.chdir(project / "notebooks")
    assert environment.resolve_run_dir("runs/demo") == project.resolve() / "runs" / "demo"
    assert environment.resolve_run_dir("runs/new") == project.resolve() / "runs" / "new"  # to write
    assert environment.run_dir_candidates("runs/demo") == [project.resolve() / "runs" / "demo"]
    # the cwd is the project root (make demo) or there is none: as given, as before
    monkeypatch.chdir(project)
    assert environment.resolve_run_dir("runs/demo") == Path("runs/demo")
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert environment.resolve_run_dir("runs/demo") == Path("runs/demo")
    # with a project root elsewhere, a relative path only the cwd has is still found there
    monkeypatch.setenv(environment.PROJECT_ENV, str(project))
    (tmp_path / "elsewhere" / "mine").mkdir()
    assert environment.project_path("mine") == tmp_path / "elsewhere" / "mine"


def test_data_dir_from_notebooks_and_the_demo_fallback(project, tmp_path, monkeypatch):
    demo = project.resolve() / "data" / "synthetic"
    monkeypatch.chdir(project / "notebooks")
    assert find_data("data/synthetic").root == demo
    assert find_data(None).root == demo  # no $KAGGLE_UTILS_DATA, no Kaggle mount: make demo's
    monkeypatch.setenv(environment.PROJECT_ENV, str(project))
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert find_data("data/synthetic").root == demo
    assert find_data().root == demo


def test_data_errors_name_the_absolute_paths_tried(project, tmp_path, monkeypatch):
    monkeypatch.chdir(project / "notebooks")
    with pytest.raises(FileNotFoundError) as err:
        find_data("data/nothing")
    message = str(err.value)
    assert str(project.resolve() / "data" / "nothing") in message
    assert str(project.resolve() / "notebooks" / "data" / "nothing") in message
    shutil.rmtree(project / "data")
    with pytest.raises(FileNotFoundError, match="no Carvana data found") as err:
        find_data()
    assert f"{project.resolve() / 'data' / 'synthetic'} (no data there)" in str(err.value)
    assert str(environment.KAGGLE_INPUT) in str(err.value)


def test_parameter_files_from_notebooks(project, tmp_path, monkeypatch):
    monkeypatch.chdir(project / "notebooks")
    member = load_member("params/demo/unet_resnet18.yaml")
    assert member.name == "unet_resnet18"
    ens = load_ensemble("params/demo/ensemble.yaml")
    assert ens.source == project.resolve() / "params" / "demo" / "ensemble.yaml"
    assert ens.member_paths("params/demo/ensemble.yaml") == ens.member_paths()
    assert member_names("params/demo/ensemble.yaml") == ["unet_resnet18", "refinenet_v4_resnet18"]
    with pytest.raises(ConfigError) as err:
        load_member("params/demo/missing.yaml")
    assert str(project.resolve() / "params" / "demo" / "missing.yaml") in str(err.value)
    assert str(project.resolve() / "notebooks" / "params" / "demo" / "missing.yaml") in str(
        err.value
    )


def test_on_kaggle_nothing_changes(project, tmp_path, monkeypatch):
    """In a kernel the outputs go to /kaggle/working and the data is the mount, never make demo's."""
    inp, work = tmp_path / "input", tmp_path / "working"
    inp.mkdir()
    work.mkdir()
    monkeypatch.setattr(environment, "KAGGLE_INPUT", inp)
    monkeypatch.setattr(environment, "KAGGLE_WORKING", work)
    monkeypatch.chdir(project / "notebooks")  # even below a folder holding params/
    assert environment.resolve_run_dir("runs/demo") == work / "runs" / "demo"
    assert environment.project_path("data/synthetic") == Path("data/synthetic")
    with pytest.raises(FileNotFoundError, match="a Kaggle input mount exists"):
        find_data()
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        find_data("data/synthetic")  # relative to the kernel's cwd only, as before
