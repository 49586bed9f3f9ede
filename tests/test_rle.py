"""RLE: the real train_masks.csv, the Kaggle idiom as reference, strict decoding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kaggle_utils.rle import MASK_SHAPE, rle_decode, rle_encode, rle_runs, rle_to_string


def kaggle_idiom(img) -> str:
    """The reference: the encoder most Carvana kernels used."""
    pixels = np.asarray(img).flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def _gif(real_sample, img: str) -> np.ndarray:
    return np.array(Image.open(real_sample / "train_masks" / img.replace(".jpg", "_mask.gif")))


def _check_rows(real_sample, rows: pd.DataFrame, every_form: bool = True) -> None:
    for img, rle in zip(rows["img"], rows["rle_mask"], strict=True):
        mask = _gif(real_sample, img)
        assert rle_encode(mask) == rle, img
        if not every_form:
            continue
        assert mask.shape == MASK_SHAPE and set(np.unique(mask)) <= {0, 1}
        assert rle_encode(mask.astype(bool)) == rle, img
        assert rle_encode(mask * np.uint8(255)) == rle, img
        assert np.array_equal(rle_decode(rle, image_id=img), mask), img


def test_real_csv_rows_equal_gif_encoding(real_sample):
    rows = pd.read_csv(real_sample / "train_masks.csv")
    _check_rows(real_sample, rows.iloc[:: max(1, len(rows) // 24)].head(24))


@pytest.mark.slow
def test_every_real_csv_row_equals_gif_encoding(real_sample):
    _check_rows(real_sample, pd.read_csv(real_sample / "train_masks.csv"), every_form=False)


def test_row_major_one_indexed():
    m = np.zeros(MASK_SHAPE, np.uint8)
    m[0, 1] = 1  # pixel 2
    assert rle_encode(m) == "2 1"
    m[:] = 0
    m[1, 0:3] = 1  # row 1 starts at pixel 1919
    assert rle_encode(m) == "1919 3"
    m[-1, -1] = 1
    assert rle_encode(m) == f"1919 3 {MASK_SHAPE[0] * MASK_SHAPE[1]} 1"


def test_empty_full_and_edges():
    assert rle_encode(np.zeros(MASK_SHAPE, bool)) == ""
    n = MASK_SHAPE[0] * MASK_SHAPE[1]
    assert rle_encode(np.ones(MASK_SHAPE, bool)) == f"1 {n}"
    assert rle_encode(np.ones(MASK_SHAPE, np.uint8) * 255) == f"1 {n}"
    assert rle_encode(np.zeros((0, 5))) == ""
    assert rle_encode(np.ones((1, 1))) == "1 1"


def _random_masks(rng: np.random.Generator):
    """Shapes of every size modulo 8, blobs, noise, periodic stripes narrower than a word."""
    for trial in range(600):
        h, w = int(rng.integers(1, 48)), int(rng.integers(1, 48))
        kind = trial % 6
        if kind == 0:
            m = rng.random((h, w)) < rng.random()
        elif kind == 1:  # a period dividing the 8-byte word: identical mixed words in a row
            pattern = rng.integers(0, 2, int(rng.choice([1, 2, 4, 8, 16]))).astype(np.uint8)
            m = np.resize(pattern, h * w).reshape(h, w)
            m[: int(rng.integers(0, h + 1))] = int(rng.integers(0, 2))
        elif kind == 2:
            m = np.zeros(h * w, np.uint8)
            a, b = sorted(rng.integers(0, h * w + 1, 2))
            m[a:b] = 1
            m = m.reshape(h, w)
        elif kind == 3:  # non-binary values: nonzero is foreground
            m = rng.integers(0, 3, (h, w)).astype(np.uint8) * np.uint8(rng.choice([1, 7, 128]))
        elif kind == 4:
            m = (rng.random((h, w)) < 0.5).astype(np.float32)
        else:
            yy, xx = np.mgrid[0:h, 0:w]
            m = ((yy - h / 2) ** 2 / (h / 3 + 1) ** 2 + (xx - w / 2) ** 2 / (w / 3 + 1) ** 2) < 1
        yield m


def test_identical_to_kaggle_idiom_on_random_masks():
    rng = np.random.default_rng(0)
    for m in _random_masks(rng):
        ref = kaggle_idiom((np.asarray(m) != 0).astype(np.uint8))
        assert rle_encode(m) == ref, (m.shape, m.dtype)
        assert np.array_equal(rle_decode(ref, m.shape), (m != 0).astype(np.uint8))


def test_periodic_words_in_full_size_mask():
    """Runs of identical 8-byte words that change inside (as in a few real masks)."""
    m = np.zeros(MASK_SHAPE, np.uint8).reshape(-1)
    m[1000:1064] = np.tile(np.array([1, 1, 0, 0, 0, 0, 0, 0], np.uint8), 8)
    m[:16] = np.tile(np.array([0, 1, 1, 0, 0, 0, 0, 0], np.uint8), 2)  # at the very start
    m[-24:] = np.tile(np.array([1, 0, 0, 0, 0, 0, 0, 1], np.uint8), 3)  # and at the end
    m[5000:900000] = 1
    m = m.reshape(MASK_SHAPE)
    assert rle_encode(m) == kaggle_idiom(m)
    assert rle_encode(m.astype(bool)) == kaggle_idiom(m)


def test_isolated_pixels_at_block_and_chunk_edges():
    """The kernel skips 64-word blocks with no change and prefetches ahead by chunks: a lone
    changed pixel just before, at and after every such edge must still be found."""
    m = np.zeros(3 * 4096 * 5 + 77, np.uint8)  # 15 chunks and a ragged tail
    for edge in range(0, m.size, 512):  # 64 words = 512 bytes
        for p in (edge - 1, edge, edge + 1, edge + 7, edge + 8):
            if 0 <= p < m.size:
                m[p] = 255
    m[-3:] = 1
    assert rle_encode(m) == kaggle_idiom((m != 0).astype(np.uint8))


def test_layouts_and_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    m = (rng.random((64, 40)) < 0.3).astype(np.uint8)
    ref = kaggle_idiom(m)
    assert rle_encode(np.asfortranarray(m)) == ref
    assert rle_encode(torch.from_numpy(m)) == ref
    assert rle_encode(torch.from_numpy(m).bool()) == ref
    big = np.zeros((2, *MASK_SHAPE), np.uint8)
    big[1, 100:900, 200:1500] = 1
    assert rle_encode(big[1]) == kaggle_idiom(big[1])
    n = MASK_SHAPE[0] * MASK_SHAPE[1]
    flat = big.reshape(-1)
    for offset in (3, 5 + n // 2):  # views that do not start on an 8-byte boundary
        view = flat[offset : offset + n].reshape(MASK_SHAPE)
        assert rle_encode(view) == kaggle_idiom(view)
        assert rle_encode(view.view(bool)) == kaggle_idiom(view)


def test_text_buffer_grows_for_masks_with_many_runs():
    """A checkerboard row has a run every other pixel: far more text than the first buffer."""
    m = np.zeros(MASK_SHAPE, np.uint8)
    m[::2, ::2] = 1  # ~614,000 runs, ~9 MB of text
    assert rle_encode(m) == kaggle_idiom(m)


def test_numpy_fallback_matches_compiled_kernel(monkeypatch, real_sample):
    """Where numba cannot load, rle_encode takes the plain numpy path: same strings."""
    import kaggle_utils.rle as rle

    rows = pd.read_csv(real_sample / "train_masks.csv")
    masks = [_gif(real_sample, img) for img in rows["img"].iloc[:3]]
    rng = np.random.default_rng(3)
    masks += [m for m in _random_masks(rng)]
    compiled = [rle_encode(m) for m in masks]
    monkeypatch.setattr(rle, "_encode_into", None)
    assert [rle_encode(m) for m in masks] == compiled


def test_rle_to_string_matches_join():
    v = np.array([0, 1, 9, 10, 99, 100, 999, 1000, 9999, 10000, 10001, 123456, 9999999, 10**7])
    assert rle_to_string(v) == " ".join(map(str, v.tolist()))
    assert rle_to_string(np.array([], np.int64)) == ""


def test_decode_empty_and_nan():
    for empty in ("", "  ", float("nan"), None):
        m = rle_decode(empty, (4, 5))
        assert m.shape == (4, 5) and m.dtype == np.uint8 and not m.any()


@pytest.mark.parametrize(
    ("rle", "fault"),
    [
        ("1 2 3", "odd number of tokens"),
        ("1 2 x 3", "token 3 'x' is not a non-negative integer"),
        ("1 2 3.5 1", "not a non-negative integer"),
        ("-1 2", "not a non-negative integer"),
        ("0 2", "start 0 < 1"),
        ("3 0", "length 0 < 1"),
        ("10 2 4 1", "unsorted"),
        ("1 5 3 2", "overlapping"),
        ("19 3", "past the image end"),
        ("1 99999999999999999999", "too large"),
    ],
)
def test_decode_rejects_malformed(rle, fault):
    with pytest.raises(ValueError, match="car_07") as err:
        rle_decode(rle, (4, 5), image_id="car_07")
    assert fault in str(err.value)
    with pytest.raises(ValueError, match="car_07"):
        rle_runs(rle.encode(), 20, "car_07")  # the bytes path (validation) agrees


def test_decode_tolerates_whitespace_and_accepts_touching_runs():
    assert rle_decode(" 1 2\t4 1\n", (1, 5)).tolist() == [[1, 1, 0, 1, 0]]
    assert rle_decode("1 2 3 2", (1, 5)).tolist() == [[1, 1, 1, 1, 0]]  # adjacent, not overlapping
    starts, lengths = rle_runs(b"3 2 7 1", 10)
    assert starts.tolist() == [2, 6] and lengths.tolist() == [2, 1]
