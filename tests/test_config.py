"""Parameter files: every shipped file validates; mistakes fail on load naming file, key and choices."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import yaml

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
        # any frame size (the model pads to a multiple of 32 and crops back, e.g. the whole
        # 1280x1918 frame); the training crops, where the steps are spent, never need padding
        assert member.stages and all(
            s.crop is None or (s.crop[0] % 32 == 0 and s.crop[1] % 32 == 0) for s in member.stages
        )


def test_full_scale_curriculum_is_the_seeds():
    member = load_member(REPO / "params/carvana/refinenetv4_resnet34.yaml")
    assert [member.stage_name(i) for i in range(3)] == [
        "s1_1024x1024",
        "s2_1152x1152",
        "s3_1280x1918",  # the whole frame, trained on 1024x1024 crops (1st place)
    ]
    assert member.stages[2].crop == (1024, 1024) and member.hq
    assert member.model.spec()["arch"] == "refinenet_v4" and member.model.encoder == "resnet34"


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


def test_size_any_side_of_32_or_more(tmp_path):
    """The model pads to a multiple of 32 (the frame's own 1280x1918 trains whole); a side
    under 32 is refused, naming the key."""
    assert load_member(write(tmp_path, MEMBER.replace("64x96", "64x100"))).stages[0].size == (
        64,
        100,
    )
    path = write(tmp_path, MEMBER.replace("64x96", "16x100"))
    with pytest.raises(ConfigError, match=r"stages\.0\.size.*at least 32"):
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
    assert parse_size("1280x1918") == (1280, 1918)
    for bad in ("16x1918", "abc", [1, 2, 3], True, 0):
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


# ------------------------------------------------ typed model / loss / augment mappings

MEMBER_FILES = sorted(
    str(p.relative_to(REPO)) for p in (REPO / "params").rglob("*.yaml") if p.name != "ensemble.yaml"
)


def load_error(tmp_path: Path, text: str) -> tuple[Path, str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_member(path)
    return path, str(err.value)


def test_misspelt_loss_term_fails_on_load(tmp_path):
    path, msg = load_error(tmp_path, MEMBER + "loss: {dcie: 1.0}\n")
    assert str(path) in msg and "'loss.dcie'" in msg and "did you mean 'dice'" in msg
    assert "boundary_weight" in msg  # the allowed keys come from the loss registry


@pytest.mark.parametrize("arch", ["refinenet_v4", "unet"])
def test_misspelt_model_key_names_path_and_the_right_key(tmp_path, arch):
    model = f"model: {{arch: {arch}, encoder: resnet18, decoder_chanels: [64, 32, 16, 16, 8]}}"
    path, msg = load_error(tmp_path, MEMBER.replace(MEMBER.splitlines()[1], model))
    assert str(path) in msg and "'model.decoder_chanels'" in msg
    assert "did you mean 'decoder_channels'" in msg
    # each arch lists its own keys: RefineNet's tunables, smp's keywords
    assert ("image_skip" in msg) == (arch == "refinenet_v4")
    assert ("decoder_attention_type" in msg) == (arch == "unet")


def test_unknown_arch_suggests_the_close_one(tmp_path):
    _, msg = load_error(tmp_path, MEMBER.replace("arch: unet", "arch: unte"))
    assert "'model.arch'" in msg and "did you mean 'unet'" in msg and "refinenet_v4" in msg
    _, msg = load_error(tmp_path, MEMBER.replace("arch: unet, ", ""))
    assert "model needs an 'arch'" in msg and "refinenet_v4" in msg


def test_model_values_are_typed_and_variant_keys_fixed(tmp_path):
    path = write(tmp_path, MEMBER)
    with pytest.raises(ConfigError, match=r"model\.encoder_depth.*'five'"):
        load_member(path, {"model.encoder_depth": "five"})
    with pytest.raises(ConfigError, match=r"model\.merge.*fixed by arch 'refinenet_v4'"):
        load_member(path, {"model.arch": "refinenet_v4", "model.merge": "add"})
    # smp with a timm encoder: unknown keys pass through to timm, as build_model passes them
    member = load_member(path, {"model.encoder": "tu-resnet18", "model.drop_path_rate": 0.1})
    assert member.model.spec()["drop_path_rate"] == 0.1
    assert load_member(path, {"model.arch": "UNet"}).model.spec()["arch"] == "UNet"


@pytest.mark.parametrize(
    ("augment", "where"),
    [
        ("{hflip: {p: 1.5}}", r"augment\.hflip\.p.*p=1.5 is not a probability"),
        ("{hflip: 1.5}", r"augment\.hflip\.p.*p=1.5"),
        ("{vflip: true}", r"augment\.vflip.*vertical flips are not offered"),
        ("{shift_scale: {shear: 3}}", r"augment\.shift_scale\.shear.*allowed keys: p, rotate"),
        ("{color: {hue: 0.7}}", r"augment\.color\.hue.*0\.5"),
        ("{hflip: maybe}", r"augment\.hflip.*true/false, a probability"),
    ],
)
def test_bad_augment_fails_on_load_with_the_key_path(tmp_path, augment, where):
    path = write(tmp_path, MEMBER + f"augment: {augment}\n")
    with pytest.raises(ConfigError, match=where) as err:
        load_member(path)
    assert str(path) in str(err.value)


def test_overrides_of_nested_mappings_are_validated(tmp_path):
    path = write(tmp_path, MEMBER)
    member = load_member(path, {"loss.dice": 0.5, "model.decoder_channels": "[32, 16, 16, 8, 8]"})
    assert member.loss.spec() == {"dice": 0.5}
    assert member.model.spec()["decoder_channels"] == [32, 16, 16, 8, 8]
    with pytest.raises(ConfigError, match=r"(?s)with overrides.*'loss\.dise'.*did you mean 'dice'"):
        load_member(path, {"loss.dise": 0.5})
    with pytest.raises(ConfigError, match=r"'model\.decoder_chanels'"):
        load_member(path, {"model.decoder_chanels": "[8]"})


def test_spec_is_what_the_user_wrote(tmp_path):
    member = load_member(write(tmp_path, MEMBER + "loss: {dice: 1, kernel: 5}\n"))
    assert member.loss.spec() == {"dice": 1, "kernel": 5}  # no defaults, the int stays an int
    assert member.model.spec() == {"arch": "unet", "encoder": "resnet18", "encoder_weights": None}
    assert member.augment is None  # no `augment:` -> None (build_augmentations(None) = defaults)
    assert load_member(write(tmp_path, MEMBER)).loss.spec() == {"bce": 1.0, "dice": 1.0}
    dumped = member.model_dump(mode="json")
    assert dumped["loss"] == {"dice": 1, "kernel": 5} and dumped["augment"] is None
    with pytest.raises(ValueError, match="frozen"):
        member.loss.dice = 0.5  # spec() would go stale: change the file or pass overrides
    again = pickle.loads(pickle.dumps(member))
    assert again.model.spec() == member.model.spec() and type(again.model) is type(member.model)


@pytest.mark.parametrize("path", MEMBER_FILES)
def test_spec_round_trips_to_the_builders(path):
    """spec() gives the builders what the raw YAML gave them: the same objects result."""
    import torch

    from kaggle_utils.augment import build_augmentations
    from kaggle_utils.losses import build_loss
    from kaggle_utils.models import build_model

    raw = yaml.safe_load((REPO / path).read_text())
    member = load_member(REPO / path)
    assert member.model.spec() == raw["model"] and member.loss.spec() == raw["loss"]
    assert member.augment.spec() == raw["augment"]
    offline = {"encoder_weights": None}  # no downloads here; the same change to both
    torch.manual_seed(0)
    from_spec = build_model({**member.model.spec(), **offline})
    torch.manual_seed(0)
    from_raw = build_model({**raw["model"], **offline})
    assert from_spec.spec == from_raw.spec
    for a, b in zip(from_spec.state_dict().values(), from_raw.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert build_loss(member.loss.spec()).spec == build_loss(raw["loss"]).spec
    assert repr(build_augmentations(member.augment.spec())) == repr(
        build_augmentations(raw["augment"])
    )


def test_params_hash_is_unchanged_by_the_schemas():
    """Pinned to the hashes the untyped (dict) member fields gave: finished stages of users' runs
    stay finished. A change here retrains every stage; do not update the values lightly."""
    unet = load_member(REPO / "params/demo/unet_resnet18.yaml")
    refinenet = load_member(REPO / "params/cpu_sample/refinenet_v4_resnet18.yaml")
    assert unet.params_hash(0) == "773e4b4076ec2f15"
    assert unet.params_hash(1) == "55b917469a9c51e0"
    assert refinenet.params_hash(0) == "4fe80b8e19340207"
    assert refinenet.params_hash(1) == "17ab4b0ab5049fb0"
    old_third = {"size": "192x288", "epochs": 6, "lr": 0.0005, "warmup_epochs": 0}  # issue 17's
    before = load_member(  # the third stage before crops: the new keys at defaults keep its hash
        REPO / "params/cpu_sample/refinenet_v4_resnet18.yaml",
        {"stages": [*refinenet.model_dump()["stages"][:2], old_third]},
    )
    assert before.params_hash(2) == "1ff33728811ced0a"
    assert load_member(REPO / "params/demo/refinenet_v4_resnet18.yaml").params_hash(0) == (
        "2cf07db25ccfeb52"
    )


def test_params_hash_of_defaults_and_overrides_is_unchanged():
    path = REPO / "params/demo/unet_resnet18.yaml"
    assert load_member(path, {"loss.dice": 0.5}).params_hash(0) == "244de6588e6f20a6"
    assert load_member(path, {"augment": None}).params_hash(0) == "8d1047a598fb49b6"
    assert load_member(path, {"loss": {}}).params_hash(0) == "84933b833dc4b182"
