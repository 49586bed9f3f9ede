"""The one inference path (validation, 05, 06): TTA forward, precision, blend, masks, device."""

from __future__ import annotations

import pytest
import torch
from _tiny_run import TINY_SPEC, tiny_checkpoint

from kaggle_utils import inference as I
from kaggle_utils.constants import IMAGENET_MEAN, IMAGENET_STD
from kaggle_utils.models import build_model

BF16_UNIT_ROUNDOFF = 2.0**-8  # bf16 keeps 8 significant bits: relative rounding error <= 2^-8


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(TINY_SPEC).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 96)


def test_tta_is_the_mean_of_the_plain_and_the_mirrored_pass(model, x):
    plain = I.forward_probs(model, x)
    mirrored = I.forward_probs(model, x.flip(-1)).flip(-1)
    tta = I.forward_probs(model, x, tta=True)
    assert tta.shape == (2, 1, 64, 96) and tta.dtype == torch.float32
    torch.testing.assert_close(tta, (plain + mirrored) / 2, atol=1e-6, rtol=1e-5)
    assert (plain - mirrored).abs().max() > 1e-4  # the mirrored pass really differs


def test_hflip_tta_is_flip_equivariant(model, x):
    """TTA(flip(x)) == flip(TTA(x)): the averaged prediction has no left/right bias."""
    a = I.forward_probs(model, x, tta=True)
    b = I.forward_probs(model, x.flip(-1), tta=True).flip(-1)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_one_forward_gives_the_loss_logits_and_the_tta_probs(model, x):
    """The training engine's validation: the plain pass's logits for the loss, and the probs 06
    submits, from one batched forward."""
    logits = I.forward_logits(model, x, tta=True)
    assert logits.shape == (4, 1, 64, 96)
    torch.testing.assert_close(logits[:2], I.forward_logits(model, x), atol=1e-5, rtol=1e-5)
    probs = I.probs_from_logits(logits, 2, tta=True)
    torch.testing.assert_close(probs, I.forward_probs(model, x, tta=True))
    with pytest.raises(ValueError, match="expected 2"):
        I.probs_from_logits(logits, 2, tta=False)


def test_a_model_with_an_aux_output_gives_its_main_output(model, x):
    class WithAux(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.inner(t)
            return out, torch.zeros(len(t), 3)

    got = I.forward_probs(WithAux(model), x, tta=True)
    torch.testing.assert_close(got, I.forward_probs(model, x, tta=True))


def test_bf16_on_the_cpu_runs_and_stays_close_to_fp32(model, x):
    """bf16 rounds every autocast op's inputs to 8 significant bits (relative error u = 2^-8).
    Over the tiny net's ~64 rounded ops, independent errors grow like sqrt(64) u = 8u relative to
    the logits' scale; sigmoid's slope is at most 1/4, so the probabilities move by at most
    2u * max|logit| (~2e-3 here; measured ~4e-4), well inside the 1e-2 that a threshold search
    in 0.02 steps could notice."""
    z32 = I.forward_logits(model, x, tta=True)
    z16 = I.forward_logits(model, x, tta=True, precision="bf16-mixed")
    assert z16.dtype == torch.float32
    scale = float(z32.abs().max())
    err = float((z16 - z32).abs().max())
    assert 0 < err <= 8 * BF16_UNIT_ROUNDOFF * scale  # > 0: autocast really ran in bf16
    p32 = I.forward_probs(model, x, tta=True)
    p16 = I.forward_probs(model, x, tta=True, precision="bf16-mixed")
    assert float((p16 - p32).abs().max()) <= min(1e-2, 2 * BF16_UNIT_ROUNDOFF * scale)
    with pytest.raises(ValueError, match="precision"):
        I.forward_probs(model, x, precision="bf16")


def test_normalise_is_imagenet_on_the_device():
    u8 = torch.randint(0, 256, (1, 3, 4, 5), dtype=torch.uint8)
    got = I.normalise(u8, "cpu")
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(got, (u8.float() / 255 - mean) / std, atol=1e-5, rtol=1e-5)


def test_ensemble_of_members_at_two_sizes(tmp_path):
    a = tiny_checkpoint(tmp_path / "a.pt", size=(64, 96), seed=0)
    b = tiny_checkpoint(tmp_path / "b.pt", size=(96, 128), seed=1)
    two = I.load_members([a, b], weights=[3, 1])
    torch.manual_seed(0)
    imgs = [torch.randn(1, 3, 64, 96), torch.randn(1, 3, 96, 128)]
    mean = I.ensemble_probs(two, imgs, [0, 1], (160, 240), tta=False)
    p0, p1 = (
        torch.nn.functional.interpolate(I.forward_probs(m.model, im), (160, 240), mode="bilinear")
        for m, im in zip(two, imgs, strict=True)
    )
    torch.testing.assert_close(mean, 0.75 * p0 + 0.25 * p1)
    vote = I.ensemble_probs(two, imgs, [0, 1], (160, 240), tta=False, mode="vote")
    torch.testing.assert_close(vote, 0.75 * (p0 > 0.5).float() + 0.25 * (p1 > 0.5).float())


def test_binarize_mean_is_above_the_threshold():
    p = torch.tensor([0.29, 0.3, 0.31, 0.9])
    assert I.binarize(p, "mean", 0.3).tolist() == [False, False, True, True]


def test_binarize_vote_needs_a_weighted_majority():
    """Each member thresholded, then more than half the weight must say yes: a tie is no."""
    yes, no = torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)

    def vote(probs, weights):
        blend = I.blend_probs(probs, weights, (1, 1), mode="vote", threshold=0.5)
        return bool(I.binarize(blend, "vote", threshold=0.9))  # vote ignores the threshold

    assert vote([yes, no], [1, 1]) is False  # a tie
    assert vote([yes, no, no], [2, 1, 1]) is False  # half the weight
    assert vote([yes, yes, no], [2, 1, 1]) is True
    assert vote([no, yes, yes], [1, 1, 1]) is True
    with pytest.raises(ValueError, match="mode"):
        I.binarize(yes, "median", 0.5)


def test_pick_device_auto_and_cpu():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    for auto in (None, "", "auto"):
        assert I.pick_device(auto).type == want
    assert I.pick_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_pick_device_cuda_without_cuda_names_the_fix():
    with pytest.raises(RuntimeError, match="no CUDA device") as err:
        I.pick_device("cuda")
    assert "device=None" in str(err.value)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        I.pick_device(torch.device("cuda:0"))
