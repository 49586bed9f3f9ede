"""Model factory: every variant builds and trains a step, merge styles, any-size wrapper, weights."""

from __future__ import annotations

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.encoders import get_encoder

from kaggle_utils.config import ModelConfig
from kaggle_utils.losses import build_loss
from kaggle_utils.metrics import dice_per_image
from kaggle_utils.models import (
    ARCHITECTURES,
    COMMON_KEYS,
    FIXED_KEYS,
    TUNABLE_KEYS,
    DecoderBlock,
    WeightsDownloadError,
    allowed_extras,
    arch_keywords,
    build_model,
)
from kaggle_utils.models.refinenet import VARIANTS

SMALL_DECODER = [32, 16, 16, 8, 8]


@pytest.fixture(autouse=True)
def _one_thread():
    # with several helpers sharing 2 cores, 2 OpenMP threads spin and run ~8x slower than 1
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _forward_backward(model: torch.nn.Module, x: torch.Tensor):
    model.train()
    out = model(x)
    logits, aux = out if isinstance(out, tuple) else (out, [])
    loss = logits.float().mean() + sum(a.float().mean() for a in aux)
    loss.backward()
    return logits, aux


@pytest.mark.parametrize(
    ("arch", "encoder"),
    [
        ("refinenet_v1", "resnet50"),
        ("refinenet_v2", "resnet50"),
        ("refinenet_v3", "resnet50"),
        ("refinenet_v4", "resnet34"),
        ("refinenet_v5", "vgg16"),
        ("refinenet_v6", "vgg16"),
    ],
)
def test_refinenet_variant_default_encoder_forward_backward(arch, encoder):
    model = build_model({"arch": arch})
    assert model.spec["encoder"] == encoder == VARIANTS[arch][0]
    x = torch.randn(2, 3, 64, 96)
    logits, aux = _forward_backward(model, x)
    assert logits.shape == (2, 1, 64, 96)
    assert torch.isfinite(logits).all()
    first_conv = next(p for p in model.encoder.parameters() if p.ndim == 4)
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    if arch == "refinenet_v6":
        assert len(aux) == 4 and all(a.shape == (2, 1, 64, 96) for a in aux)
        model.eval()
        with torch.no_grad():
            assert model(x).shape == (2, 1, 64, 96)  # eval: logits only
    else:
        assert aux == []


@pytest.mark.parametrize("arch", [f"refinenet_v{i}" for i in range(1, 7)])
@pytest.mark.parametrize("encoder", ["resnet18", "efficientnet-b0"])
def test_refinenet_variant_other_encoders(arch, encoder):
    model = build_model({"arch": arch, "encoder": encoder, "decoder_channels": SMALL_DECODER})
    logits, aux = _forward_backward(model, torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 1, 64, 64)
    assert len(aux) == (4 if arch == "refinenet_v6" else 0)


@pytest.mark.parametrize("arch", sorted(a for a in smp.MODEL_ARCHITECTURES_MAPPING if a != "dpt"))
def test_smp_architectures_by_name(arch):
    # dpt needs a ViT ("tu-vit_*") encoder and a fixed image size; it is registered but not run here
    model = build_model({"arch": arch, "encoder": "resnet18"})
    assert ARCHITECTURES[arch].family == "smp"
    logits, _ = _forward_backward(model, torch.randn(2, 3, 128, 160))  # pan pools the 1/32 map
    assert logits.shape == (2, 1, 128, 160)


def _merge_inputs(arch: str) -> list[tuple[DecoderBlock, int]]:
    """Run a forward pass and record the channel count entering each block's convs."""
    model = build_model({"arch": arch, "encoder": "resnet18", "decoder_channels": SMALL_DECODER})
    blocks = list(model.net.decoder.blocks)
    seen: list[int] = []
    hooks = [
        b.convs.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1])) for b in blocks
    ]
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    return list(zip(blocks, seen, strict=True))


def test_v1_adds_skips_into_the_decoder():
    blocks = _merge_inputs("refinenet_v1")
    assert all(b.merge == "add" for b, _ in blocks)
    for block, channels_in in blocks[:-1]:  # every block but the last has a skip
        assert block.skip_channels > 0
        proj = block.skip_proj[0]
        assert (proj.in_channels, proj.out_channels) == (block.skip_channels, block.in_channels)
        assert channels_in == block.in_channels  # added: the width does not grow


@pytest.mark.parametrize("arch", ["refinenet_v2", "refinenet_v3", "refinenet_v4", "refinenet_v5"])
def test_v2_to_v5_concatenate_skips(arch):
    blocks = _merge_inputs(arch)
    assert all(b.merge == "concat" and b.skip_proj is None for b, _ in blocks)
    for block, channels_in in blocks[:-1]:
        assert block.skip_channels > 0
        assert channels_in == block.in_channels + block.skip_channels  # stacked


def test_v2_and_v3_differ_in_decoder_width_and_depth():
    v2 = build_model({"arch": "refinenet_v2", "encoder": "resnet18"}).net.decoder.blocks
    v3 = build_model({"arch": "refinenet_v3", "encoder": "resnet18"}).net.decoder.blocks
    assert [b.out_channels for b in v3] == [2 * b.out_channels for b in v2]
    assert all(len(b3.convs) == len(b2.convs) + 1 for b2, b3 in zip(v2, v3, strict=True))


def test_vgg_variants_use_the_full_resolution_feature():
    decoder = build_model({"arch": "refinenet_v5", "decoder_channels": SMALL_DECODER}).net.decoder
    assert decoder.full_res_skip and decoder.blocks[-1].skip_channels == 64
    resnet = build_model({"arch": "refinenet_v4", "decoder_channels": SMALL_DECODER}).net.decoder
    assert not resnet.full_res_skip and resnet.blocks[-1].skip_channels == 0


def test_image_skip_stacks_the_input_image_into_the_last_block():
    """image_skip: the full-resolution block receives the (normalised) image itself."""
    spec = {"arch": "refinenet_v4", "encoder": "resnet18", "decoder_channels": SMALL_DECODER}
    model = build_model({**spec, "image_skip": True}).eval()
    last = model.net.decoder.blocks[-1]
    assert last.skip_channels == 3
    got: list[torch.Tensor] = []
    hook = last.convs.register_forward_pre_hook(lambda m, a: got.append(a[0]))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x)
    hook.remove()
    assert got[0].shape[1] == last.in_channels + 3
    torch.testing.assert_close(got[0][:, -3:], x)  # the image, stacked after the features
    with pytest.raises(ValueError, match="image_skip"):  # a misspelling lists the key
        build_model({**spec, "image_skp": True})


def test_wrapper_pads_reflect_and_crops_back():
    model = build_model(
        {"arch": "refinenet_v4", "encoder": "resnet18", "decoder_channels": SMALL_DECODER}
    )
    model.eval()
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        out = model(x)
        # by hand: 50 -> 64 (7 above, 7 below), 70 -> 96 (13 left, 13 right)
        manual = model.net(F.pad(x, (13, 13, 7, 7), mode="reflect"))[..., 7:57, 13:83]
    assert out.shape == (1, 1, 50, 70)
    torch.testing.assert_close(out, manual)
    with torch.no_grad():  # smaller than the padding: falls back to replicate
        assert model(torch.randn(1, 3, 9, 13)).shape == (1, 1, 9, 13)


def test_deep_supervision_outputs_are_cropped_too():
    model = build_model(
        {"arch": "refinenet_v6", "encoder": "resnet18", "decoder_channels": SMALL_DECODER}
    )
    logits, aux = model.train()(torch.randn(2, 3, 40, 72))
    assert logits.shape == (2, 1, 40, 72) and all(a.shape == (2, 1, 40, 72) for a in aux)


def test_full_frame_1280x1918_through_the_wrapper():
    model = build_model(
        {"arch": "refinenet_v4", "encoder": "resnet18", "decoder_channels": [32, 16, 8, 8, 4]}
    ).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 1280, 1918))
    assert out.shape == (1, 1, 1280, 1918)
    assert torch.isfinite(out).all()


def test_channels_last_and_bf16_autocast():
    model = build_model(
        {"arch": "refinenet_v4", "encoder": "resnet18", "decoder_channels": SMALL_DECODER}
    )
    model = model.to(memory_format=torch.channels_last).train()
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        loss = build_loss({"bce": 1.0, "dice": 1.0})(
            logits, (torch.rand(2, 1, 64, 64) > 0.5).float()
        )
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(loss)


def test_spec_is_resolved_and_rebuilds_the_same_model():
    model = build_model({"arch": "REFINENET_V4", "decoder_channels": (64, 32, 16, 16, 8)})
    assert model.spec == {
        "arch": "refinenet_v4",
        "encoder": "resnet34",
        "encoder_weights": None,
        "classes": 1,
        "in_channels": 3,
        "decoder_channels": [64, 32, 16, 16, 8],
    }
    again = build_model(model.spec)
    again.load_state_dict(model.state_dict(), strict=True)


def test_unknown_names_fail_with_the_valid_ones():
    with pytest.raises(ValueError, match="refinenet_v7") as err:
        build_model({"arch": "refinenet_v7"})
    for name in ("refinenet_v1", "refinenet_v6", "unet", "fpn", "deeplabv3plus"):
        assert name in str(err.value)
    with pytest.raises(ValueError, match="lacks 'arch'"):
        build_model({"encoder": "resnet34"})
    with pytest.raises(ValueError, match="'decoder_width'.*allowed keys.*decoder_channels"):
        build_model({"arch": "refinenet_v4", "decoder_width": 8})
    with pytest.raises(ValueError, match="'merge' is fixed by arch 'refinenet_v1'"):
        build_model({"arch": "refinenet_v1", "merge": "concat"})
    with pytest.raises(ValueError, match="encoder 'resnet35'"):
        build_model({"arch": "refinenet_v4", "encoder": "resnet35"})
    with pytest.raises(ValueError, match="'decoder_widths' for arch 'unet'.*decoder_channels"):
        build_model({"arch": "unet", "encoder": "resnet18", "decoder_widths": [8]})


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_registry_keys_are_the_member_schema_keys(arch):
    """A member file's `model:` schema takes exactly the keys build_model takes for that arch."""
    entry = ARCHITECTURES[arch]
    extras = allowed_extras(entry, entry.default_encoder)
    assert extras is not None and set(arch_keywords(arch)) == set(extras)
    schema = ModelConfig.schema_for({"arch": arch})
    assert set(schema.model_fields) == set(COMMON_KEYS) | set(extras)
    assert not set(FIXED_KEYS) & set(schema.model_fields)
    if entry.family == "refinenet":
        assert extras == TUNABLE_KEYS and arch_keywords(arch)["image_skip"] == (bool, False)
    else:  # timm encoders take more keys, which smp passes on
        assert allowed_extras(entry, "tu-resnet18") is None
        open_schema = ModelConfig.schema_for({"arch": arch, "encoder": "tu-resnet18"})
        assert open_schema.model_config["extra"] == "allow"


# ---------------------------------------------------------------- encoder weights


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(1)
    return {k: v.clone() for k, v in get_encoder("resnet18", weights=None).state_dict().items()}


def _assert_encoder_has(model, state):
    own = model.encoder.state_dict()
    assert set(own) == set(state)
    for key, value in state.items():
        torch.testing.assert_close(own[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("layout", ["safetensors", "pth", "pth_state_dict_encoder_prefix"])
@pytest.mark.parametrize("arch", ["refinenet_v4", "unet"])
def test_local_weights_file_is_loaded(tmp_path, resnet18_state, layout, arch):
    if layout == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "resnet18.safetensors"
        save_file(resnet18_state, str(path))
    elif layout == "pth":
        path = tmp_path / "resnet18.pth"
        torch.save(
            {**resnet18_state, "fc.weight": torch.zeros(1000, 512)}, path
        )  # torchvision style
    else:
        path = tmp_path / "model.pt"
        torch.save({"state_dict": {f"encoder.{k}": v for k, v in resnet18_state.items()}}, path)
    model = build_model({"arch": arch, "encoder": "resnet18", "encoder_weights": str(path)})
    _assert_encoder_has(model, resnet18_state)
    assert model.spec["encoder_weights"] == str(path)


def test_local_weights_errors_name_the_file(tmp_path, resnet18_state):
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        build_model(
            {"arch": "refinenet_v4", "encoder": "resnet18", "encoder_weights": str(missing)}
        )
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in resnet18_state.items() if not k.startswith("layer4")}, partial)
    with pytest.raises(ValueError, match=r"partial\.pth.*keys missing.*layer4"):
        build_model(
            {"arch": "refinenet_v4", "encoder": "resnet18", "encoder_weights": str(partial)}
        )
    # resnet34 weights for a resnet18 encoder: shapes/keys do not fit
    with pytest.raises(ValueError, match="partial.pth"):
        build_model({"arch": "unet", "encoder": "resnet34", "encoder_weights": str(partial)})


@pytest.mark.parametrize("arch", ["refinenet_v4", "unet"])
def test_imagenet_offline_fails_saying_how_to_fix_it(tmp_path, monkeypatch, arch):
    import huggingface_hub.constants as hf_constants

    # smp fetches weights with huggingface_hub.hf_hub_download; offline mode + an empty cache make
    # that fail at once, as on a Kaggle kernel without internet (where it fails after retries)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsDownloadError) as err:
        build_model({"arch": arch, "encoder": "resnet18", "encoder_weights": "imagenet"})
    message = str(err.value)
    assert isinstance(err.value, RuntimeError)
    assert "'imagenet'" in message and "'resnet18'" in message
    assert "cannot be downloaded" in message
    assert "local weights file path" in message and "Kaggle dataset" in message
    assert "encoder_weights: null" in message


# ---------------------------------------------------------------- a tiny model learns


def shapes_batch(n: int = 8, h: int = 64, w: int = 96, seed: int = 0):
    """Coloured ellipses ("cars") on a noisy background, with their masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    images = rng.normal(0, 0.3, (n, 3, h, w)).astype(np.float32)
    masks = np.zeros((n, 1, h, w), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        ry, rx = rng.uniform(0.15, 0.3) * h, rng.uniform(0.2, 0.35) * w
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        masks[i, 0] = inside
        images[i][:, inside] += rng.uniform(-1, 1, (3, 1)).astype(np.float32) + 0.8
    return torch.from_numpy(images), torch.from_numpy(masks)


@pytest.mark.slow
def test_tiny_model_overfits_a_batch_with_the_combo_loss():
    torch.manual_seed(0)
    images, masks = shapes_batch()
    model = build_model(
        {"arch": "refinenet_v4", "encoder": "resnet18", "decoder_channels": SMALL_DECODER}
    )
    loss_fn = build_loss({"bce": 1.0, "dice": 1.0, "boundary_weight": 2.0})
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    dice = torch.zeros(len(images))
    for step in range(200):
        model.train()
        opt.zero_grad()
        loss = loss_fn(model(images), masks)
        loss.backward()
        opt.step()
        if step % 5 == 4:
            model.eval()
            with torch.no_grad():
                dice = dice_per_image(torch.sigmoid(model(images)), masks)
            if dice.mean() > 0.96:
                break
    assert dice.mean() > 0.95, f"mean Dice {dice.mean():.3f} after {step + 1} steps"
