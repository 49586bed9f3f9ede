"""The CUDA paths, checked against fp32 / the CPU on a GPU (bench/gpu_suite.py runs these there).

Every test is marked `cuda` and skips without a CUDA device (`pytest -m cuda` selects them). The
tolerances are derived, not tuned: a unit roundoff u per dtype (bf16 2^-8, fp16 and TF32 2^-11,
fp32 2^-24), grown as a random walk over the L convolutions a value passes (4 u sqrt(L)), or
measured from the run itself (an fp32 run with its weights rounded to the AMP dtype shows how far
rounding alone moves the training losses).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _tiny_run import make_run
from test_metrics import numpy_dice, random_masks

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

UNIT_ROUNDOFF = {"bf16-mixed": 2.0**-8, "16-mixed": 2.0**-11, "tf32": 2.0**-11, "fp32": 2.0**-24}
AMP_DTYPE = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
TINY_MEMBER = {
    "name": "tiny_cuda",
    "model": {
        "arch": "refinenet_v4",
        "encoder": "resnet18",
        "encoder_weights": None,
        "decoder_channels": [64, 32, 16, 16, 8],
    },
    "loss": {"bce": 1.0, "dice": 1.0, "boundary_weight": 2.0},
    # a tiny LR: over its few steps the losses move by what rounding does, not by training (a
    # step the fp16 scaler skips on an overflow must not count as a difference)
    "optimizer": {"name": "adamw", "lr": 1e-6, "grad_clip": 5.0},
    "batch_size": 8,
    "n_folds": 4,
    "fold": 0,
    "seed": 0,
    "num_workers": 0,
    "cache": True,
    "max_train_images": 32,
    "stages": [{"size": "96x128", "epochs": 1}],
}


def conv_count(model: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def rounding_tol(kind: str, depth: int) -> float:
    """Relative error of a value computed through `depth` roundings of unit roundoff u."""
    return 4.0 * UNIT_ROUNDOFF[kind] * math.sqrt(depth)


@contextlib.contextmanager
def tf32_off():
    """fp32 without TF32 (PyTorch's CUDA default runs convolutions in TF32). Set and restored by
    hand: torch.backends.cuda.matmul answers getattr only, which monkeypatch cannot undo."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture
def true_fp32():
    """The reference the mixed-precision paths are held to: fp32 without TF32."""
    with tf32_off():
        yield


def no_bf16(monkeypatch) -> None:
    """Take the path of a GPU without bf16 (Kaggle's T4): precision_for gives 16-mixed."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)


# --------------------------------------------------------------------------------------------------
# the engine under AMP


def train_tiny(data_dir: Path, run_dir: Path, amp: bool, round_to: torch.dtype | None = None):
    """One epoch of the tiny member on CUDA through the engine; (history row, metrics, stage)."""
    from kaggle_utils.train import build_stage_model, fit_stage, prepare_stage

    member_file = run_dir / "tiny_cuda.yaml"
    run_dir.mkdir(parents=True, exist_ok=True)
    member_file.write_text(yaml.safe_dump(TINY_MEMBER))
    run = prepare_stage(
        member_file, 0, data_dir=data_dir, run_dir=run_dir, device="cuda", overrides={"amp": amp}
    )
    model = build_stage_model(run)
    if round_to is not None:  # the rounding AMP applies to the weights, in an fp32 run
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(round_to).float())
    metrics = fit_stage(run, model, progress=False)
    import pandas as pd

    row = pd.read_csv(run.stage_dir / "history.csv").iloc[-1]
    return row, metrics, run.stage_dir


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_amp_steps_stay_finite_and_match_fp32(
    precision, small_synthetic, tmp_path, monkeypatch, true_fp32
):
    from kaggle_utils.engine.state import load_train_state

    ref, _, _ = train_tiny(small_synthetic, tmp_path / "fp32", amp=False)
    rounded, _, _ = train_tiny(small_synthetic, tmp_path / "r", False, AMP_DTYPE[precision])
    if precision == "16-mixed":
        no_bf16(monkeypatch)
    row, metrics, stage_dir = train_tiny(small_synthetic, tmp_path / "amp", amp=True)
    assert metrics["precision"] == precision
    for key in ("train_loss", "val_loss", "val_dice"):
        assert math.isfinite(row[key]), f"{precision}: {key} is {row[key]}"
    u = UNIT_ROUNDOFF[precision]
    for key in ("train_loss", "val_loss"):
        drift = abs(rounded[key] - ref[key])  # what rounding the weights alone moves
        tol = 4 * drift + 2 * u * abs(ref[key])
        assert abs(row[key] - ref[key]) <= tol, (
            f"{precision} {key} {row[key]:.6f} vs fp32 {ref[key]:.6f}: beyond {tol:.2e} "
            f"(4 x the {drift:.2e} that weight rounding alone moves it, + 2u)"
        )
    scaler = load_train_state(stage_dir / "last.pt")["precision"]
    if precision == "16-mixed":  # the loss scaler ran, and its scale survived the steps
        assert scaler.get("scale") is not None and 0 < float(scaler["scale"]) < math.inf
    else:
        assert not scaler.get("scale")  # bf16 needs no scaler


# --------------------------------------------------------------------------------------------------
# layouts, the guided filter, Dice


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_channels_last_output_equals_contiguous(precision):
    from kaggle_utils.inference import forward_logits
    from kaggle_utils.models import build_model

    torch.manual_seed(0)
    model = build_model(TINY_MEMBER["model"]).cuda().eval()
    x = torch.randn(4, 3, 96, 128, device="cuda")
    ref = forward_logits(model, x, precision=precision)
    model = model.to(memory_format=torch.channels_last)
    out = forward_logits(
        model, x.contiguous(memory_format=torch.channels_last), precision=precision
    )
    # same roundings on both layouts: only the accumulation order differs (cuDNN picks kernels
    # per layout); fp32 here is PyTorch's default, convolutions in TF32
    kind = precision if precision != "32-true" else "tf32"
    tol = rounding_tol(kind, conv_count(model)) * ref.abs().max().item()
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= tol


def test_guided_filter_on_gpu_equals_cpu(small_synthetic):
    import cv2

    from kaggle_utils.index import train_index
    from kaggle_utils.layout import find_data
    from kaggle_utils.refine import guided_upsample, to_guide

    data = find_data(small_synthetic)
    ids = list(train_index(data)["id"][:4])
    images = torch.from_numpy(np.stack([data.load_image(i) for i in ids])).permute(0, 3, 1, 2)
    masks = np.stack([data.load_mask(i) for i in ids]).astype(np.float32)
    h, w = masks.shape[1] // 4, masks.shape[2] // 4
    small = np.stack([cv2.GaussianBlur(cv2.resize(m, (w, h)), (5, 5), 0) for m in masks])
    probs = torch.from_numpy(small)[:, None]
    guide = to_guide(images)
    eps = 1e-4
    cpu = guided_upsample(probs, guide, radius=2, eps=eps)
    gpu = guided_upsample(probs.cuda(), guide.cuda(), radius=2, eps=eps).cpu()
    # var(I) = E[I^2] - E[I]^2 cancels: an fp32 error u E[I^2] <= u, divided by var + eps
    tol = 2 * UNIT_ROUNDOFF["fp32"] / eps
    assert (gpu - cpu).abs().max().item() <= tol
    flipped = (gpu > 0.5) != (cpu > 0.5)
    assert ((cpu - 0.5).abs()[flipped] <= tol).all()  # only where the CPU is on the threshold


def test_gpu_dice_equals_numpy_at_full_resolution():
    from kaggle_utils.metrics import dice_per_image, full_res_dice

    truth = random_masks(4, 1280, 1918, seed=5)
    probs = np.random.default_rng(6).random((4, 1, 1280, 1918)).astype(np.float32)
    probs[0] = 0.0  # empty vs empty
    expected = np.float32([numpy_dice(probs[i, 0] > 0.5, truth[i]) for i in range(4)])
    got = dice_per_image(torch.from_numpy(probs).cuda(), torch.from_numpy(truth).cuda())
    assert got.device.type == "cuda"
    np.testing.assert_array_equal(got.cpu().numpy(), expected)  # integer counts: exact
    full = full_res_dice(torch.from_numpy(probs).cuda(), torch.from_numpy(truth).cuda())
    np.testing.assert_array_equal(full.cpu().numpy(), expected)


# --------------------------------------------------------------------------------------------------
# 06 on CUDA against 06 on the CPU


def _read_rows(path: Path):
    import gzip

    import pandas as pd

    with gzip.open(path, "rt") as f:
        return pd.read_csv(f, keep_default_na=False)


def _probs(members, data, ids, guided, device: str, precision: str) -> torch.Tensor:
    """What 06 blends for `ids` on `device` (inference.ensemble_probs, as predict's batches)."""
    from kaggle_utils import inference as I
    from kaggle_utils import testset as T
    from kaggle_utils.imageio import guide_shape
    from kaggle_utils.refine import to_guide

    shape = T.image_shape(data.test, ids[0])
    sizes = sorted({m.size for m in members})
    items = [
        T.TestImages(data.test, ids, sizes, guide_shape(shape, guided.scale))[i]
        for i in range(len(ids))
    ]
    images = [
        I.normalise(torch.stack([it[f"image{k}"] for it in items]), device)
        for k in range(len(sizes))
    ]
    guide = to_guide(torch.stack([it["guide"] for it in items]).to(device))
    for m in members:
        m.model.to(device)
    probs = I.ensemble_probs(
        members,
        images,
        [sizes.index(m.size) for m in members],
        shape,
        tta=True,
        precision=precision,
        guide=guide,
        guided=guided,
    )
    return probs[:, 0].float().cpu()


@pytest.mark.parametrize("mode", ["fp32", "bf16-mixed", "16-mixed"])
def test_submission_on_cuda_writes_the_cpu_rows(
    mode, small_synthetic, tmp_path, monkeypatch, request
):
    """The tiny run folder's two members through 06 on CUDA and on the CPU: the same ids in the
    same order, and masks that differ only where the CPU's probability lies within the derived
    tolerance of the threshold."""
    from kaggle_utils import inference as I
    from kaggle_utils.config import GuidedFilterConfig
    from kaggle_utils.layout import find_data
    from kaggle_utils.predict import predict_submission
    from kaggle_utils.rle import rle_decode

    if mode == "fp32":
        request.getfixturevalue("true_fp32")
    if mode == "16-mixed":
        no_bf16(monkeypatch)
    data = find_data(small_synthetic)
    stages = make_run(data, tmp_path / "run")
    ckpts = [d / "best.pt" for d in stages.values()]
    guided = GuidedFilterConfig(scale=4, radius=2, eps=1e-3)
    kw = {"limit": 4, "guided": guided, "batch_size": 2, "num_workers": 0, "progress": False}
    cpu_rows = _read_rows(
        predict_submission(
            I.load_members(ckpts), data, tmp_path / "c.csv.gz", device="cpu", **kw
        ).path
    )
    amp = mode != "fp32"
    gpu_rows = _read_rows(
        predict_submission(
            I.load_members(ckpts), data, tmp_path / "g.csv.gz", device="cuda", amp=amp, **kw
        ).path
    )
    assert list(gpu_rows["img"]) == list(cpu_rows["img"]) and len(cpu_rows) == 4
    ids = [i.removesuffix(".jpg") for i in cpu_rows["img"]]
    members = I.load_members(ckpts)
    p_cpu = _probs(members, data, list(cpu_rows["img"]), guided, "cpu", "32-true")
    depth = conv_count(members[0].model)
    z = torch.logit(p_cpu.clamp(1e-6, 1 - 1e-6)).abs().max().item()
    # fp32 (TF32 off): CPU and GPU sum each convolution in other orders; TF32's unit bounds that
    kind = "tf32" if mode == "fp32" else mode
    # sigmoid' <= 1/4; logits carry 4u sqrt(L) relative error; the guided filter adds its own
    tol = 0.25 * rounding_tol(kind, depth) * (1 + z) + 2 * UNIT_ROUNDOFF["fp32"] / guided.eps
    precision = {"fp32": "32-true"}.get(mode, mode)
    p_gpu = _probs(members, data, list(cpu_rows["img"]), guided, "cuda", precision)
    assert (p_gpu - p_cpu).abs().max().item() <= tol
    shape = tuple(p_cpu.shape[-2:])
    for k, (c, g) in enumerate(zip(cpu_rows["rle_mask"], gpu_rows["rle_mask"], strict=True)):
        differ = torch.from_numpy(rle_decode(c, shape) != rle_decode(g, shape))
        near = (p_cpu[k] - 0.5).abs() <= tol
        assert not (differ & ~near).any(), f"{ids[k]}: pixels away from the threshold differ"
