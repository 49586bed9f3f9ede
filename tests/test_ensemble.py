"""Ensemble tuning on OOF: scores match the full-resolution metric, the choice beats its members."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny_run import make_run

from kaggle_utils import ensemble as E
from kaggle_utils.layout import find_data
from kaggle_utils.metrics import full_res_dice


@pytest.fixture(scope="module")
def data(small_synthetic):
    return find_data(small_synthetic)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    make_run(data, run_dir, members=(("alpha", (64, 96), 0.35), ("beta", (96, 160), 0.35)))
    return run_dir


@pytest.fixture(scope="module")
def oof(run, data):
    return E.oof_set(E.pick_stages(E.find_stages(run)), data)


def test_leaderboard_lists_members_and_stages(run):
    board = E.leaderboard(run)
    assert sorted(board["member"]) == ["alpha", "beta"]
    assert set(board["size"]) == {"64x96", "96x160"}
    assert board["cv_dice"].between(0, 1).all()
    assert (board["oof_images"] == 32).all()
    assert board["cv_dice"].is_monotonic_decreasing


def test_score_equals_full_resolution_metric(oof, data):
    """The histogram scorer gives what metrics.full_res_dice gives on the upsampled mean."""
    for mode_weights in ([1.0, 0.0], [0.3, 0.7]):
        got = E.score(oof, mode_weights, threshold=0.5)["dice"].to_numpy()
        want = []
        for image_id in oof.ids:
            mask = torch.from_numpy(data.load_mask(image_id))[None]
            p = E.ensemble_prob(oof, image_id, mode_weights)
            want.append(float(full_res_dice(torch.from_numpy(p)[None, None], mask, 0.5)[0]))
        np.testing.assert_allclose(got, want, atol=2e-3)


def test_vote_matches_direct_count(oof, data):
    got = E.score(oof, [1.0, 1.0], threshold=0.5, mode="vote")["dice"].to_numpy()
    want = []
    for image_id in oof.ids:
        up = oof.upsampled(image_id).numpy() / 255.0
        pred = (up > 0.5).mean(0) > 0.5  # two members: both must say yes
        truth = data.load_mask(image_id) > 0
        want.append(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_ensemble_beats_or_equals_best_member(oof):
    singles = E.image_dice(oof, np.eye(2)).mean(0).max(1)  # each member at its best threshold
    choice = E.choose(oof)
    assert choice.dice >= singles.max()
    # independent member errors: averaging is clearly better than either member alone
    assert choice.dice > singles.max() + 0.01
    assert abs(sum(choice.weights) - 1) < 1e-9 and min(choice.weights) >= 0


def test_bad_member_gets_less_weight(data, tmp_path):
    members = (("good", (64, 96), 0.25), ("noisy", (64, 96), 0.9))
    make_run(data, tmp_path, members=members, n_val_cars=2)
    oof = E.oof_set(E.pick_stages(E.find_stages(tmp_path)), data)
    choice = E.choose(oof)
    singles = E.image_dice(oof, np.eye(2)).mean(0).max(1)
    assert choice.dice >= singles.max() - 1e-5  # min_gain: a threshold move must gain > 1e-5
    good, noisy = choice.weights
    assert good > noisy


def test_cross_validation_by_car(oof):
    cv = E.cross_validate(oof)
    assert list(cv["direction"]) == ["A->B", "B->A"]
    assert (cv["tune_images"] + cv["test_images"] == len(oof.ids)).all()
    a, b = E.split_cars(oof.ids)
    assert not {E.car_of(i) for i in a} & {E.car_of(i) for i in b}
    assert cv["heldout_dice"].between(0, 1).all()
    assert (cv["heldout_dice"] > cv["heldout_best_single@0.5"]).all()


def test_ensemble_yaml_round_trip(run, oof, tmp_path):
    stages = E.pick_stages(E.find_stages(run))
    choice = E.choose(oof)
    spec = E.ensemble_spec(stages, choice, run, name="t", tta=True, largest_component=True)
    path = E.write_ensemble(spec, run / "ensemble.yaml")
    back = E.read_ensemble(path)
    assert [m["name"] for m in back["members"]] == ["alpha", "beta"]
    assert back["largest_component"] is True  # 06 applies what 05 recorded
    assert back["members"][0]["checkpoint"] == "alpha/s1_64x96/best.pt"
    assert back["threshold"] == pytest.approx(choice.threshold)
    bad = tmp_path / "bad.yaml"
    bad.write_text("members: []\n")
    with pytest.raises(ValueError, match="threshold"):
        E.read_ensemble(bad)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        E.read_ensemble(tmp_path / "nope.yaml")


def test_repredict_with_and_without_tta(run, data):
    stage = E.pick_stages(E.find_stages(run, ["alpha"]))[0]
    ids = stage.oof_ids()[:3]
    plain = E.repredict(stage.checkpoint, data, ids, tta=False)
    flip = E.repredict(stage.checkpoint, data, ids, tta=True)
    assert plain[ids[0]].shape == (64, 96) and plain[ids[0]].dtype == np.uint8
    assert any(not np.array_equal(plain[i], flip[i]) for i in ids)


def test_members_sharing_no_image_fail_clearly(data, tmp_path):
    make_run(data, tmp_path, members=(("a", (64, 96), 0.3),), n_val_cars=1)
    other = make_run(data, tmp_path / "x", members=(("b", (64, 96), 0.3),), n_val_cars=2)
    for png in sorted((tmp_path / "a" / "s1_64x96" / "oof").glob("*.png")):
        (other["b"] / "oof" / png.name).unlink()
    stages = E.find_stages(tmp_path) + E.find_stages(tmp_path / "x")
    with pytest.raises(ValueError, match="share no validation image"):
        E.oof_set(stages, data)


def test_keep_if_it_holds_prefers_what_cross_validates(oof):
    choice = E.choose(oof)
    cv = E.cross_validate(oof)
    kept, why = E.keep_if_it_holds(oof, choice, cv)
    assert kept.weights == choice.weights and "kept" in why  # averaging really helps here
    worse = cv.assign(**{"heldout_dice": 0.0, "heldout_equal@0.5": 0.1})
    single, why = E.keep_if_it_holds(oof, choice, worse)
    assert sorted(single.weights) == [0.0, 1.0] and "alone" in why and single.threshold == 0.5
    equal, why = E.keep_if_it_holds(oof, choice, cv.assign(heldout_dice=0.0))
    assert equal.weights == [0.5, 0.5] and "equal weights" in why


def test_submitted_score_without_refinement_is_the_searched_score(oof):
    """Built mask by mask as 06 does, it agrees with the histogram search it complements."""
    got = E.submitted_score(oof, [0.3, 0.7], threshold=0.5)
    want = E.score(oof, [0.3, 0.7], threshold=0.5)
    assert list(got["id"]) == list(want["id"])
    np.testing.assert_allclose(got["dice"], want["dice"], atol=2e-3)


def test_submitted_score_keeps_the_largest_component(oof):
    """A blob far from the car costs Dice; the clean-up 06 applies removes it and only it."""
    image_id = oof.ids[0]
    blobbed = [dict(p) for p in oof.probs]
    for p in blobbed:
        p[image_id] = p[image_id].copy()
        p[image_id][:3, :3] = 255  # the frame's corner: the synthetic car never reaches it
    with_blob = E.OOFSet(oof.members, [image_id], blobbed, oof.data)
    alone = oof.subset([image_id])
    plain = E.submitted_score(with_blob, [0.5, 0.5])["dice"][0]
    cleaned = E.submitted_score(with_blob, [0.5, 0.5], largest_component=True)["dice"][0]
    reference = E.submitted_score(alone, [0.5, 0.5], largest_component=True)["dice"][0]
    assert plain < E.submitted_score(alone, [0.5, 0.5])["dice"][0] - 1e-3
    assert cleaned == reference


def test_submitted_score_upsamples_through_the_guided_filter(oof, data):
    """The guide is the image's own photo at 1/scale: the filter snaps the blurred low-resolution
    blend to the car's edges, so it scores clearly above bilinear upsampling."""
    gf = {"scale": 2, "radius": 2, "eps": 1e-4}
    plain = E.submitted_score(oof, [0.5, 0.5])
    guided = E.submitted_score(oof, [0.5, 0.5], guided_filter=gf)
    assert guided["dice"].mean() > plain["dice"].mean() + 1e-3
    from kaggle_utils.config import GuidedFilterConfig
    from kaggle_utils.imageio import gray_guide, guide_shape
    from kaggle_utils.inference import blend_probs
    from kaggle_utils.refine import to_guide

    image_id = oof.ids[1]  # the same mask, built from the pieces 06 uses
    truth = data.load_mask(image_id)
    rgb = data.load_image(image_id, size=guide_shape(truth.shape, 2))
    probs = [torch.from_numpy(p[image_id]).float()[None, None] / 255 for p in oof.probs]
    guide = to_guide(torch.from_numpy(gray_guide(rgb))[None, None])
    p = blend_probs(probs, [0.5, 0.5], truth.shape, guide=guide, guided=GuidedFilterConfig(**gf))
    mask = (p[0, 0] > 0.5).numpy()
    want = 2 * (mask & (truth > 0)).sum() / (mask.sum() + (truth > 0).sum())
    assert guided["dice"][1] == pytest.approx(want, abs=1e-12)
