"""JPEG decoding at a target size (reduced DCT decode) and GIF masks, on the real Kaggle files."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from kaggle_utils.imageio import (
    decode_jpeg,
    decode_jpeg_full,
    decode_mask_gif,
    encode_jpeg,
    encode_mask_gif,
    jpeg_size,
    reduction_factor,
)

IDS = ["02159e548029_01", "02159e548029_05", "0a0e3fb8f782_09"]


def _real_jpeg(real_sample, image_id: str) -> bytes:
    path = real_sample / "train" / f"{image_id}.jpg"
    if not path.exists():
        path = real_sample / "test" / f"{image_id}.jpg"
    return path.read_bytes()


def test_full_decode_is_rgb_like_pil(real_sample):
    data = _real_jpeg(real_sample, IDS[0])
    img = decode_jpeg(data)
    assert img.shape == (1280, 1918, 3) and img.dtype == np.uint8
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)
    assert np.abs(img.astype(np.int16) - ref).mean() < 1.0  # same pixels, RGB order
    assert jpeg_size(data) == (1280, 1918)


@pytest.mark.parametrize(
    "size, factor",
    [
        ((1280, 1918), 1),
        ((1024, 1024), 1),  # 1/2 would give 640 rows: never upsample a reduced image
        ((640, 959), 2),
        ((512, 768), 2),
        ((320, 480), 4),
        ((160, 240), 8),
        ((161, 240), 4),
        ((2000, 3000), 1),
        (None, 1),
    ],
)
def test_reduction_factor_never_upsamples(size, factor):
    assert reduction_factor((1280, 1918), size) == factor


@pytest.mark.parametrize("size", [(512, 768), (320, 480), (160, 240), (600, 900), (256, 256)])
def test_reduced_decode_matches_full_decode_and_resize(real_sample, size):
    for image_id in IDS:
        data = _real_jpeg(real_sample, image_id)
        fast = decode_jpeg(data, size)
        slow = decode_jpeg_full(data, size)
        assert fast.shape == (*size, 3) and fast.dtype == np.uint8
        mad = np.abs(fast.astype(np.float32) - slow.astype(np.float32)).mean()
        assert mad < 1.5, (image_id, size, mad)  # measured 0.4-1.0 on 0..255


def test_reduced_decode_is_really_reduced(real_sample):
    """The DCT-scaled decode is what we use: exact size of libjpeg's 1/8 output, no resize."""
    data = _real_jpeg(real_sample, IDS[0])
    reduced = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_8)
    assert reduced.shape[:2] == (160, 240)
    np.testing.assert_array_equal(decode_jpeg(data, (160, 240)), reduced[..., ::-1])


def test_upsampling_and_odd_sizes(real_sample):
    data = _real_jpeg(real_sample, IDS[1])
    assert decode_jpeg(data, (1408, 2048)).shape == (1408, 2048, 3)
    assert decode_jpeg(data, (1280, 1792)).shape == (1280, 1792, 3)
    assert decode_jpeg(data, (97, 131)).shape == (97, 131, 3)


def test_bad_input_names_the_file():
    with pytest.raises(ValueError, match="train.zip:train/x.jpg"):
        decode_jpeg(b"not a jpeg", (64, 64), name="train.zip:train/x.jpg")
    with pytest.raises(ValueError, match="size"):
        decode_jpeg(b"", (0, 10))
    with pytest.raises(ValueError, match="m.gif"):
        decode_mask_gif(b"GIF89a garbage", name="m.gif")


def test_real_gif_masks_are_0_1(real_sample):
    path = real_sample / "train_masks" / f"{IDS[0]}_mask.gif"
    data = path.read_bytes()
    mask = decode_mask_gif(data)
    assert mask.shape == (1280, 1918) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    raw = np.asarray(Image.open(io.BytesIO(data)))  # palette indices, exactly {0, 1}
    np.testing.assert_array_equal(mask, raw)
    assert 0.05 < mask.mean() < 0.5


def test_mask_decode_is_robust_to_0_255_and_greyscale():
    mask = np.zeros((40, 60), np.uint8)
    mask[5:30, 10:50] = 1
    for im in (Image.fromarray(mask * 255), Image.fromarray(mask * 255).convert("P")):
        for fmt in ("GIF", "PNG"):
            buf = io.BytesIO()
            im.save(buf, format=fmt)
            np.testing.assert_array_equal(decode_mask_gif(buf.getvalue()), mask)


def test_encoders_round_trip():
    mask = np.zeros((50, 70), np.uint8)
    mask[10:40, 5:60] = 1
    gif = encode_mask_gif(mask)
    im = Image.open(io.BytesIO(gif))
    assert im.format == "GIF" and im.mode == "P"
    assert set(np.unique(np.asarray(im))) == {0, 1}
    np.testing.assert_array_equal(decode_mask_gif(gif), mask)

    rgb = np.zeros((64, 96, 3), np.uint8)
    rgb[..., 0] = 200  # pure red survives as red (RGB order end to end)
    out = decode_jpeg(encode_jpeg(rgb, 95))
    assert out[..., 0].mean() > 190 and out[..., 2].mean() < 10


def test_exif_orientation_is_ignored_like_the_masks():
    """Pixels as stored (what masks/RLE refer to), for the full and the reduced decode alike."""
    rgb = np.zeros((80, 120, 3), np.uint8)
    rgb[:, :60, 1] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° when displaying"
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95, exif=exif)
    data = buf.getvalue()
    assert jpeg_size(data) == (80, 120)
    assert decode_jpeg(data).shape == (80, 120, 3)
    small = decode_jpeg(data, (40, 60))
    assert small.shape == (40, 60, 3) and small[:, :25, 1].mean() > 200


def test_several_sizes_from_one_decode_equal_single_decodes(real_sample):
    """06 decodes each test JPEG once per libjpeg scale for all members and the guide: the
    images are exactly what a decode per size gives, whatever the order and repeats."""
    from kaggle_utils.imageio import decode_jpeg, decode_jpeg_sizes

    data = next((real_sample / "test").glob("*.jpg")).read_bytes()
    sizes = [(128, 192), (320, 480), None, (128, 192), (640, 960), (1024, 1024)]
    for got, size in zip(decode_jpeg_sizes(data, sizes), sizes, strict=True):
        np.testing.assert_array_equal(got, decode_jpeg(data, size))
    with pytest.raises(ValueError, match="cannot decode JPEG broken.jpg"):
        decode_jpeg_sizes(data[:200] + b"\0" * 50, [(128, 192)], name="broken.jpg")
