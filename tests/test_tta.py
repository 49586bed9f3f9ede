"""TTA settings (kaggle_utils.tta): names, inverses, today's mirror average bit for bit, the
setting 05 chooses on OOF and 06 applies, and ensemble files / specs written before settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny_run import TINY_SPEC, make_run, tiny_checkpoint

from kaggle_utils import ensemble as E
from kaggle_utils import inference as I
from kaggle_utils import predict as P
from kaggle_utils.config import EnsembleConfig, load_ensemble
from kaggle_utils.layout import find_data
from kaggle_utils.models import build_model
from kaggle_utils.tta import PRESETS, parse_setting, parse_transform, tta_probs

SETTINGS = [
    "none",
    "hflip",
    "scales",
    "hflip+scales",
    ["identity", "hflip_scale_0.75", "scale_1.25", "hflip_scale_1.25"],
]


class ChannelModel(torch.nn.Module):
    """An equivariant "model": its logits are the input's first channel, so every transform's
    inverse must give back the plain map; counts its forwards and their batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return x[:, :1]


def run(model: torch.nn.Module):
    return lambda batch: I.forward_logits(model, batch)


def test_names_presets_and_errors():
    assert parse_setting(True).names == ["identity", "hflip"] == parse_setting("hflip").names
    assert parse_setting(False).label == "none" == parse_setting(None).label
    assert parse_setting("identity+hflip").label == "hflip"  # the preset's name
    assert parse_setting(list(PRESETS["hflip+scales"])).label == "hflip+scales"
    custom = parse_setting(["identity", "scale_1.125"])
    assert custom.label == "identity+scale_1.125" and custom.record == custom.names
    assert parse_setting("hflip").record is True and parse_setting("none").record is False
    t = parse_transform("hflip_scale_0.875")
    assert t.flip and t.scale == 0.875 and t.size((256, 384)) == (224, 352)  # multiples of 32
    with pytest.raises(ValueError, match=r"'hflp' \(did you mean 'hflip'\?\); registered: ident"):
        parse_setting(["identity", "hflp"])
    with pytest.raises(ValueError, match="scale_<f>"):
        parse_transform("scale_9")
    with pytest.raises(ValueError, match="twice"):
        parse_setting("identity+hflip+hflip")


@pytest.mark.parametrize("name", ["identity", "hflip", "scale_0.875", "hflip_scale_1.125"])
def test_each_inverse_undoes_its_forward(name):
    t = parse_transform(name)
    const = torch.full((2, 1, 64, 96), 0.3).mul(torch.arange(1.0, 3.0).view(2, 1, 1, 1))
    seen = t.forward(const)
    assert seen.shape[-2:] == t.size((64, 96)) and all(s % 32 == 0 for s in seen.shape[-2:])
    torch.testing.assert_close(t.inverse(seen, (64, 96)), const, atol=1e-6, rtol=0)
    if t.scale == 1.0:  # a flip is exactly invertible on any map
        x = torch.randn(2, 1, 64, 96)
        assert torch.equal(t.inverse(t.forward(x), (64, 96)), x)


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
def test_every_setting_gives_the_plain_map_on_an_equivariant_model(setting):
    """The channel model on per-image constants is exactly equivariant under flips and resizes;
    on a smooth ramp the resizes cost only interpolation error."""
    model = ChannelModel()
    const = torch.linspace(-2, 2, 6).view(2, 3, 1, 1).expand(2, 3, 64, 96).contiguous()
    got = tta_probs(run(model), const, setting)
    torch.testing.assert_close(got, torch.sigmoid(const[:, :1]), atol=1e-6, rtol=0)
    ramp = torch.linspace(-3, 3, 96).view(1, 1, 1, 96).expand(2, 3, 64, 96).contiguous()
    got = tta_probs(run(model), ramp, setting)
    torch.testing.assert_close(got, torch.sigmoid(ramp[:, :1]), atol=2e-3, rtol=0)


def test_hflip_is_todays_mirror_average_bit_for_bit():
    torch.manual_seed(0)
    model = build_model(TINY_SPEC).eval()
    x = torch.randn(3, 3, 64, 96)
    old = I.forward_probs(model, x, tta=True)
    for tta in (True, "hflip", ["identity", "hflip"]):
        assert torch.equal(I.forward_tta_probs(model, x, tta), old)
    assert torch.equal(I.forward_tta_probs(model, x, False), I.forward_probs(model, x))
    members = [I.Member("m", model, (64, 96))]
    blend = I.ensemble_probs(members, [x], [0], (160, 240), tta=True)
    assert torch.equal(blend, I.blend_probs([old], [1.0], (160, 240)))


def test_transforms_of_one_size_share_a_forward_and_settings_share_the_cache():
    model = ChannelModel()
    x = torch.randn(2, 3, 256, 384)
    tta_probs(run(model), x, "hflip+scales")
    assert model.calls == [(4, 3, 256, 384), (2, 3, 224, 352), (2, 3, 288, 448)]
    model.calls.clear()
    cache: dict = {}
    a = tta_probs(run(model), x, "hflip", cache)
    b = tta_probs(run(model), x, "hflip+scales", cache)
    assert len(model.calls) == 3 and not torch.equal(a, b)
    assert torch.equal(a, tta_probs(run(ChannelModel()), x, "hflip"))  # cached == fresh


# -------------------------------------------------------------------------------- 05 and 06


@pytest.fixture(scope="module")
def data(small_synthetic):
    return find_data(small_synthetic)


@pytest.fixture(scope="module")
def run_dir(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    make_run(data, path, members=(("alpha", (64, 96), 0.35),), n_val_cars=1)
    return path


def test_05_chooses_on_oof_records_the_setting_and_06_applies_it(run_dir, data, tmp_path):
    candidates = ["none", "hflip", "hflip+scales"]
    stages = E.pick_stages(E.find_stages(run_dir))
    sources = E.probability_sources(stages, data, tta=candidates, max_images=4)
    assert list(sources) == ["stored", *candidates]
    old = E.repredict(stages[0].checkpoint, data, sources["hflip"].ids, tta=True)
    assert all(np.array_equal(old[i], sources["hflip"].probs[0][i]) for i in old)  # shared pass
    label, setting, table = E.choose_tta(sources, candidates)
    assert table["chosen"].sum() == 1 and table.loc[table["chosen"], "tta"].item() == label
    best = table["oof_dice"].max()
    assert table.loc[table["chosen"], "oof_dice"].item() >= best - 1e-5
    # 05 records a setting (here one no candidate had, to see it travel) and 06 runs exactly it
    forced = parse_setting(["identity", "scale_1.5"])  # 64x96 -> 96x160: a real resize
    spec = E.ensemble_spec(stages, E.choose(sources[label]), run_dir, tta=forced)
    path = E.write_ensemble(spec, tmp_path / "ensemble.yaml")
    assert E.read_ensemble(path)["tta"] == ["identity", "scale_1.5"]
    settings = P.submit_settings(E.read_ensemble(path))
    assert parse_setting(settings["tta"]) == forced
    members = I.members_from_ensemble(spec, run_dir)
    kw = {"limit": 2, "batch_size": 2, "num_workers": 0, "progress": False, "threshold": 0.52}
    got = P.predict_submission(members, data, tmp_path / "a.csv.gz", **{**settings, **kw})
    subs = {}
    for tta in (forced.names, "none", "hflip"):
        out = tmp_path / f"{len(subs)}.csv.gz"
        subs[str(tta)] = P.predict_submission(members, data, out, tta=tta, **kw).path.read_bytes()
    assert got.path.read_bytes() == subs[str(forced.names)]
    assert subs[str(forced.names)] not in (subs["none"], subs["hflip"])


def test_with_06_post_processing_candidates_rank_by_the_masks_06_writes(run_dir, data):
    """The search's bilinear Dice can rank settings differently from the masks 06 writes after
    guided upsampling and the largest component: the choice follows what is submitted."""
    candidates = ["none", "hflip"]
    stages = E.pick_stages(E.find_stages(run_dir))
    sources = E.probability_sources(stages, data, tta=candidates, max_images=4)
    post = {"largest_component": True, "guided_filter": {"scale": 2, "radius": 2, "eps": 1e-4}}
    _, _, table = E.choose_tta(sources, candidates, min_gain=0.0, **post)
    for _, row in table.iterrows():
        c = E.choose(sources[row["tta"]])
        written = E.submitted_score(sources[row["tta"]], c.weights, c.threshold, **post)
        assert row["submitted_dice"] == pytest.approx(written["dice"].mean(), abs=1e-12)
    best = table["submitted_dice"].idxmax()
    assert table.loc[best, "chosen"]  # min_gain 0: the best written Dice wins outright


def test_ensemble_files_and_specs_written_before_settings_still_load(repo_root, tmp_path):
    for name in ("demo", "cpu_sample", "carvana"):
        cfg = load_ensemble(repo_root / "params" / name / "ensemble.yaml")
        assert all(parse_setting(c) for c in cfg.tta)
    tta = ["none", "hflip+scales", ["identity", "scale_1.125"]]  # the forms 05 takes
    cfg = EnsembleConfig(name="e", members=["m.yaml"], tta=tta)
    assert [parse_setting(c).label for c in cfg.tta] == [
        "none",
        "hflip+scales",
        tta[2][0] + "+" + tta[2][1],
    ]
    with pytest.raises(ValueError, match="did you mean 'hflip'"):
        EnsembleConfig(name="e", members=["m.yaml"], tta=["hflp"])
    with pytest.raises(ValueError, match="listed twice"):
        EnsembleConfig(name="e", members=["m.yaml"], tta=["hflip", "identity+hflip"])
    ckpt = tiny_checkpoint(tmp_path / "best.pt")
    for tta, names in ((True, ["identity", "hflip"]), (False, ["identity"]), (None, None)):
        spec = {"threshold": 0.5, "members": [{"checkpoint": str(ckpt)}]}
        if tta is not None:
            spec["tta"] = tta
        path = E.write_ensemble(spec, tmp_path / "old.yaml")
        got = parse_setting(P.submit_settings(E.read_ensemble(path))["tta"])
        assert got.names == (names or ["identity", "hflip"])  # no key: hflip, as 06 did
    bad = E.write_ensemble({**spec, "tta": ["identity", "flip"]}, tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match=r"bad.yaml: key 'tta': unknown TTA transform 'flip'"):
        E.read_ensemble(bad)
