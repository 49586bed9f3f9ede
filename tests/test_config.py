"""Parameter files: every shipped file validates; mistakes fail on load naming file, key and choices."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaggle_utils.config import (
    ConfigError,
    apply_overrides,
    load_ensemble,
    load_member,
    parse_size,
)

REPO = Path(__file__).resolve().parents[1]
MEMBER = """\
name: tiny
model: {arch: unet, encoder: resnet18, encoder_weights: null}
optimizer: {name: adamw, lr: 0.001}
stages:
  - {size: 64x96, epochs: 2}
  - {size: [128, 192], epochs: 1, lr: 0.0005}
"""


def write(tmp_path: Path, text: str, name: str = "member.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "path", sorted(str(p.relative_to(REPO)) for p in (REPO / "params").rglob("*.yaml"))
)
def test_shipped_params_validate(path):
    full = REPO / path
    if full.name == "ensemble.yaml":
        ens = load_ensemble(full)
        assert all(p.is_file() for p in ens.member_paths())
    else:
        member = load_member(full)
        assert member.stages and all(
            h % 32 == 0 and w % 32 == 0 for h, w in (s.size for s in member.stages)
        )


def test_full_scale_curriculum_is_the_seeds():
    member = load_member(REPO / "params/carvana/refinenetv4_resnet34.yaml")
    assert [member.stage_name(i) for i in range(3)] == [
        "s1_1024x1024",
        "s2_1152x1152",
        "s3_1280x1792",
    ]
    assert member.model["arch"] == "refinenet_v4" and member.model["encoder"] == "resnet34"


def test_member_loads_and_names_stages(tmp_path):
    member = load_member(write(tmp_path, MEMBER))
    assert member.stages[0].size == (64, 96) and member.stages[1].size == (128, 192)
    assert member.stage_name(1) == "s2_128x192"
    assert member.stage_lr(0) == 0.001 and member.stage_lr(1) == 0.0005
    assert member.stage_batch_size(0) == member.batch_size


def test_misspelt_key_names_file_key_and_allowed(tmp_path):
    path = write(tmp_path, MEMBER + "optimiser: {name: sgd}\n")
    with pytest.raises(ConfigError) as err:
        load_member(path)
    msg = str(err.value)
    assert str(path) in msg and "'optimiser'" in msg and "did you mean 'optimizer'" in msg
    assert "allowed keys:" in msg and "schedule" in msg


def test_misspelt_nested_key(tmp_path):
    path = write(tmp_path, MEMBER.replace("lr: 0.001}", "lr: 0.001, weight_decy: 0.1}"))
    with pytest.raises(ConfigError, match=r"optimizer\.weight_decy.*weight_decay") as err:
        load_member(path)
    assert "momentum" in str(err.value)  # the allowed keys of `optimizer`


def test_wrong_type_names_key(tmp_path):
    path = write(tmp_path, MEMBER.replace("epochs: 2", "epochs: ten"))
    with pytest.raises(ConfigError, match=r"stages\.0\.epochs.*'ten'"):
        load_member(path)


def test_size_not_multiple_of_32(tmp_path):
    path = write(tmp_path, MEMBER.replace("64x96", "64x100"))
    with pytest.raises(ConfigError, match=r"stages\.0\.size.*multiples of 32"):
        load_member(path)


def test_bad_choice_lists_allowed_values(tmp_path):
    path = write(tmp_path, MEMBER.replace("name: adamw", "name: rmsprop"))
    with pytest.raises(
        ConfigError, match=r"optimizer\.name.*'rmsprop'.*allowed values.*adamw.*sgd"
    ):
        load_member(path)


def test_missing_required_and_fold_range(tmp_path):
    with pytest.raises(ConfigError, match="'stages' is required"):
        load_member(write(tmp_path, "model: {arch: unet}\n"))
    with pytest.raises(ConfigError, match="fold 5 must be < n_folds 5"):
        load_member(write(tmp_path, MEMBER + "fold: 5\n"))


def test_overrides(tmp_path):
    path = write(tmp_path, MEMBER)
    member = load_member(path, {"optimizer.lr": "1e-2", "stages.0.epochs": 5, "ema.decay": 0.99})
    assert member.optimizer.lr == 0.01 and member.stages[0].epochs == 5 and member.ema.decay == 0.99
    with pytest.raises(ConfigError, match="stages.7.epochs"):
        load_member(path, {"stages.7.epochs": 1})
    with pytest.raises(ConfigError, match="with overrides.*'optimizer.lrr'"):
        load_member(path, {"optimizer.lrr": 1})
    assert apply_overrides({"a": {"b": 1}}, {"a.c": "[1, 2]"}) == {"a": {"b": 1, "c": [1, 2]}}


def test_params_hash_tracks_what_matters(tmp_path):
    path = write(tmp_path, MEMBER)
    base = load_member(path)
    assert base.params_hash(0) == load_member(path, {"num_workers": 7}).params_hash(0)
    assert base.params_hash(0) != load_member(path, {"optimizer.lr": 0.5}).params_hash(0)
    # a later stage's change does not invalidate an earlier finished stage
    assert base.params_hash(0) == load_member(path, {"stages.1.epochs": 9}).params_hash(0)
    assert base.params_hash(1) != load_member(path, {"stages.1.epochs": 9}).params_hash(1)


def test_guided_filter_key_is_checked_and_hashed(tmp_path):
    path = write(tmp_path, MEMBER)
    base = load_member(path)
    assert base.guided_filter is None
    on = load_member(path, {"guided_filter": {"radius": 3}})
    assert on.guided_filter.scale == 4 and on.guided_filter.radius == 3
    assert on.params_hash(0) != base.params_hash(0)  # it decides the best epoch
    with pytest.raises(ConfigError, match=r"guided_filter\.scale"):
        load_member(path, {"guided_filter": {"scale": 3}})
    with pytest.raises(ConfigError, match=r"guided_filter\.radious"):
        load_member(path, {"guided_filter": {"radious": 3}})


def test_parse_size():
    assert parse_size("1280x1792") == (1280, 1792) and parse_size(1024) == (1024, 1024)
    for bad in ("1280x1918", "abc", [1, 2, 3], True, 0):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_ensemble_errors(tmp_path):
    write(tmp_path, MEMBER, "m.yaml")
    ens = load_ensemble(write(tmp_path, "members: [m.yaml]\nfolds: [0, 1]\n", "ens.yaml"))
    assert ens.name == "ens" and ens.member_paths() == [(tmp_path / "m.yaml").resolve()]
    assert ens.resolved_run_dir() == "runs/ens"
    with pytest.raises(ConfigError, match="key 'members'.*'nope.yaml' not found"):
        load_ensemble(write(tmp_path, "members: [nope.yaml]\n", "e2.yaml"))
    with pytest.raises(ConfigError, match="unknown key 'memberz'"):
        load_ensemble(write(tmp_path, "memberz: [m.yaml]\nmembers: [m.yaml]\n", "e3.yaml"))
    with pytest.raises(ConfigError, match=r"folds \[7\]"):
        load_ensemble(write(tmp_path, "members: [m.yaml]\nfolds: [7]\n", "e4.yaml"))
