"""Streamed test-set prediction: members at their own resolution, hflip TTA, a resumable submission.

The submit path never holds more than a few batches of masks: a DataLoader's workers read and decode
the test JPEGs (folder or zip, in place), the model(s) run on the device through
`inference.ensemble_probs` (the forward pass validation scores, under the same precision policy),
probabilities are averaged and upsampled to the full frame on the device, thresholded, and the
uint8 masks go to `submission.SubmissionWriter` from a background thread (RLE encode overlaps the
next batch's inference; the writer's own threads compress), whose chunk files make an interrupted
run resumable. The finished file is validated before it is declared done.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from kaggle_utils.config import GuidedFilterConfig
from kaggle_utils.constants import MASK_SHAPE
from kaggle_utils.inference import (
    Member,
    binarize,
    dice_masks,
    ensemble_probs,
    normalise,
    pick_device,
)
from kaggle_utils.precision import precision_for
from kaggle_utils.refine import gray_guide, guide_shape, to_guide

# --------------------------------------------------------------------------------------------------
# settings and images


def submit_settings(spec: dict, cfg: Any = None) -> dict[str, Any]:
    """``predict_submission`` keyword arguments from 05's ensemble spec: tta, combine mode,
    threshold and the post-processing 05 recorded; where 05 predates a setting, the ensemble
    file's (``cfg``, an ``EnsembleConfig``) is used."""

    def pick(key: str, default: Any) -> Any:
        if key in spec:
            return spec[key]
        return getattr(cfg, key, default) if cfg is not None else default

    return {
        "tta": bool(spec.get("tta", True)),
        "mode": spec.get("combine", "mean"),
        "threshold": float(spec["threshold"]),
        "largest_component": bool(pick("largest_component", False)),
        "guided": pick("guided_filter", None),  # a dict from 05, a GuidedFilterConfig from cfg
    }


class TestImages(Dataset):
    """Test JPEGs from a FileStore, decoded once per distinct member size (uint8 CHW tensors).

    Workers decode (libjpeg DCT-scaled where the size allows); normalisation happens on the device so
    the worker-to-main transfer stays uint8.
    """

    def __init__(
        self,
        store: Any,
        names: Sequence[str],
        sizes: Sequence[tuple[int, int]],
        guide_size: tuple[int, int] | None = None,
    ):
        self.store = store
        self.names = list(names)
        self.sizes = [tuple(s) for s in sizes]
        self.guide_size = guide_size  # also a gray guide at this size (``refine``)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict:
        from kaggle_utils.imageio import decode_jpeg_sizes

        name = self.names[i]
        data = self.store.read_bytes(name)
        label = self.store.describe(name)
        guide = [self.guide_size] if self.guide_size is not None else []
        try:  # one reduced decode per libjpeg scale, shared by the members and the guide
            images = decode_jpeg_sizes(data, [*self.sizes, *guide], name=label)
        except Exception as exc:
            raise ValueError(f"cannot decode test image {label}: {exc}") from exc
        out: dict[str, Any] = {"index": i}
        for k, img in enumerate(images[: len(self.sizes)]):
            out[f"image{k}"] = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        if guide:
            out["guide"] = torch.from_numpy(gray_guide(images[-1])[None])
        return out


def image_shape(store: Any, name: str) -> tuple[int, int]:
    """Full (H, W) of one test image from its JPEG header (the shape the masks must have)."""
    from kaggle_utils.imageio import jpeg_size

    label = store.describe(name)
    try:
        return tuple(jpeg_size(store.read_bytes(name), label))  # type: ignore[return-value]
    except ValueError as exc:
        raise ValueError(f"cannot read test image {label}: {exc}") from exc


def select_ids(
    sample_ids: Sequence[str], available: Sequence[str] | set, limit: Any = None
) -> list[str]:
    """Which sample-submission ids to predict, in sample order.

    limit=None: every id (ids missing from the test store fail, naming how many and a few);
    limit="available": only ids present in the test store (a partial run, e.g. the real sample's 33);
    limit=N (int): the first N of the ids present in the test store;
    limit=[ids...]: exactly those ids (each must be in the sample submission and the test store).
    """
    have = set(available)
    if limit is None:
        missing = [i for i in sample_ids if i not in have]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(sample_ids)} sample_submission ids are missing from the test "
                f"images (e.g. {', '.join(missing[:5])}); pass limit='available' (or an int / a list "
                "of ids) for a partial run"
            )
        return list(sample_ids)
    if isinstance(limit, str):
        if limit != "available":
            raise ValueError(f"limit={limit!r}: use None, 'available', an int, or a list of ids")
        chosen = [i for i in sample_ids if i in have]
    elif isinstance(limit, (int, np.integer)) and not isinstance(limit, bool):
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        chosen = [i for i in sample_ids if i in have][: int(limit)]
    else:
        wanted = [str(i) for i in limit]
        known = set(sample_ids)
        unknown = [i for i in wanted if i not in known]
        if unknown:
            raise ValueError(
                f"{len(unknown)} requested ids are not in sample_submission.csv "
                f"(e.g. {', '.join(unknown[:5])})"
            )
        missing = [i for i in wanted if i not in have]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} requested ids are missing from the test images "
                f"(e.g. {', '.join(missing[:5])})"
            )
        wanted_set = set(wanted)
        chosen = [i for i in sample_ids if i in wanted_set]
    if not chosen:
        raise FileNotFoundError("no sample_submission id is present in the test images")
    return chosen


# --------------------------------------------------------------------------------------------------
# the submission


class _Encoder:
    """One background thread feeding the SubmissionWriter (RLE encode, chunk hand-off) so the
    encode of batch k overlaps the inference of batch k+1; a bounded queue keeps memory flat.
    ``prepare(masks)``, if given, runs in that thread first (mask clean-up, off the GPU's path)."""

    def __init__(
        self, writer: Any, depth: int = 2, prepare: Callable[[np.ndarray], np.ndarray] | None = None
    ):
        import queue
        import threading

        self.writer = writer
        self.prepare = prepare
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="submission-encode", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is None:
                try:
                    ids, masks = item
                    if self.prepare is not None:
                        masks = self.prepare(masks)
                    self.writer.add(ids, masks)
                except BaseException as exc:  # re-raised in the caller's thread
                    self.error = exc

    def put(self, ids: list[str], masks: np.ndarray) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((ids, masks))

    def join(self, raise_error: bool = True) -> None:
        self.queue.put(None)
        self.thread.join()
        if raise_error and self.error is not None:
            raise self.error


def _fingerprint(members: Sequence[Member], **settings: Any) -> dict:
    return {
        "members": [
            {
                "checkpoint": str(Path(m.checkpoint).resolve()),
                "weight": round(m.weight, 6),
                "size": list(m.size),
            }  # fmt: skip
            for m in members
        ],
        **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in settings.items()},
    }


def _fingerprint_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".parts") / "predict.json"


def _check_resume(
    out_path: Path, members: Sequence[Member], restart: bool, **settings: Any
) -> None:
    """Refuse to resume parts that another ensemble wrote (or drop them when restart)."""
    import json

    parts = out_path.with_name(out_path.name + ".parts")
    if not parts.is_dir():
        return
    if restart:
        shutil.rmtree(parts)
        return
    path = _fingerprint_path(out_path)
    old = json.loads(path.read_text()) if path.is_file() else None
    if old is not None and old != _fingerprint(members, **settings):
        raise ValueError(
            f"{parts} holds parts of an interrupted run with other members or settings "
            f"({old}); delete that folder or pass restart=True"
        )


def _save_fingerprint(out_path: Path, members: Sequence[Member], **settings: Any) -> None:
    import json

    from kaggle_utils.atomic import atomic_write_text

    atomic_write_text(_fingerprint_path(out_path), json.dumps(_fingerprint(members, **settings)))


@dataclass
class PredictResult:
    path: Path
    n_images: int
    seconds: float
    images_per_s: float
    shape: tuple[int, int] = MASK_SHAPE
    resumed_from: int = 0


def predict_submission(
    members: Sequence[Member],
    data: Any,
    out_path: str | os.PathLike,
    *,
    limit: Any = None,
    hq: bool = False,
    tta: bool = True,
    mode: str = "mean",
    threshold: float = 0.5,
    largest_component: bool = False,
    guided: GuidedFilterConfig | dict | None = None,
    batch_size: int = 4,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    chunk_size: int = 1000,
    encode_workers: int | None = None,
    on_batch: Callable[[int], None] | None = None,
    progress: bool = True,
    cpu_threads: int | None = None,
    restart: bool = False,
) -> PredictResult:
    """Predict every selected test image and write a validated `submission.csv.gz` (resumable).

    data: a `layout.CompetitionData`. limit: see `select_ids`. on_batch(n_done) is called after each
    batch is handed to the writer (progress hooks; tests use it to interrupt a run for real).
    amp: mixed precision on CUDA (None: on; bf16 where the GPU has it, else fp16, as
    `precision.precision_for` decides for training); the CPU predicts in fp32.
    chunk_size: rows per resumable part; encode_workers: compression threads of the writer;
    cpu_threads: torch threads on the CPU (None: the cores the decode workers leave free).
    restart: drop the parts of an interrupted run instead of resuming it. Parts written by a
    different ensemble (checkpoints, weights, threshold, TTA, mode) are never resumed silently.
    largest_component: keep each mask's largest connected component (``postprocess``).
    guided: upsample with the photo as guide (``refine``; a ``GuidedFilterConfig`` or its dict).
    """
    from kaggle_utils.submission import SubmissionWriter

    if not members:
        raise ValueError("predict_submission needs at least one member")
    dev = pick_device(device)
    store, ids = _test_ids(data, hq, limit)
    out_shape = image_shape(store, ids[0])  # MASK_SHAPE on Kaggle; smaller synthetic sets differ
    guided = GuidedFilterConfig.model_validate(guided) if guided is not None else None
    precision = precision_for(dev, amp=amp is None or bool(amp))  # None: mixed on CUDA
    plan = _Plan(members, dev, out_shape, tta, mode, threshold, guided, precision)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    settings = _settings(tta, mode, threshold, largest_component, guided)
    _check_resume(out_path, members, **settings, restart=restart)
    writer = SubmissionWriter(
        out_path, ids, chunk_size=chunk_size, shape=out_shape, workers=encode_workers
    )
    _save_fingerprint(out_path, members, **settings)
    todo = writer.pending_ids()
    done = len(ids) - len(todo)
    if done:
        print(f"resuming {out_path.name}: {done} of {len(ids)} images already written", flush=True)
    workers = num_workers if num_workers is not None else min(4, os.cpu_count() or 1)
    loader = DataLoader(
        TestImages(store, todo, plan.sizes, plan.guide_size),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=dev.type == "cuda",
        prefetch_factor=2 if workers > 0 else None,
    )
    old_threads = torch.get_num_threads()
    _cpu_setup(dev, workers, cpu_threads)
    started = time.perf_counter()
    bar = _progress_bar(progress, len(ids), done)
    try:
        n = _write_batches(plan, loader, todo, writer, largest_component, bar, on_batch, done)
    finally:
        torch.set_num_threads(old_threads)
        if bar is not None:
            bar.close()
    if not out_path.is_file():
        raise RuntimeError(f"{out_path} was not written: {len(writer.pending_ids())} rows pending")
    seconds = time.perf_counter() - started
    rate = n / seconds if seconds > 0 else float("nan")
    print(
        f"wrote {out_path} ({len(ids)} images; {n} predicted now in {seconds:.1f} s, "
        f"{rate:.2f} images/s, {plan.precision}); validated",
        flush=True,
    )
    return PredictResult(out_path, len(ids), seconds, rate, out_shape, done)


def _test_ids(data: Any, hq: bool, limit: Any) -> tuple[Any, list[str]]:
    """The test store and the sample-submission ids to predict from it."""
    store = data.test_hq if hq else data.test
    if store is None:
        raise FileNotFoundError(
            f"no {'test_hq' if hq else 'test'} images (folder or zip) under {data.root}"
        )
    sample = data.read_csv("sample_submission")
    if "img" not in sample.columns:
        raise ValueError(f"sample_submission.csv under {data.root} has no 'img' column")
    return store, select_ids(sample["img"].astype(str).tolist(), store.names(), limit)


def _settings(
    tta: bool,
    mode: str,
    threshold: float,
    largest_component: bool,
    guided: GuidedFilterConfig | None,
) -> dict[str, Any]:
    """What the resume fingerprint records; optional settings only when on, so earlier runs'
    fingerprints stay valid."""
    settings: dict[str, Any] = {"tta": tta, "mode": mode, "threshold": threshold}
    if largest_component:
        settings["largest_component"] = True
    if guided is not None:
        settings["guided_filter"] = guided.model_dump()
    return settings


def _cpu_setup(dev: torch.device, workers: int, cpu_threads: int | None) -> None:
    """On the CPU: keep freed memory (full-resolution batches would page-fault) and size torch's
    pool to the cores the decode workers and the encoder leave free: an oversubscribed pool is
    far slower than a smaller one (see ensemble.base.single_thread)."""
    if dev.type == "cpu":
        from kaggle_utils.allocator import keep_freed_memory

        keep_freed_memory()
        if cpu_threads is None:
            cpu_threads = max(1, (os.cpu_count() or 1) - workers)
    if cpu_threads:
        torch.set_num_threads(cpu_threads)


def _progress_bar(progress: bool, total: int, done: int) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="predict", unit="img")


@dataclass
class _Plan:
    """How each batch becomes masks: the members on `device` at their sizes, the blend, the
    precision; one place so the loop below stays a loop."""

    members: Sequence[Member]
    device: torch.device
    out_shape: tuple[int, int]
    tta: bool
    mode: str
    threshold: float
    guided: GuidedFilterConfig | None
    precision: str

    def __post_init__(self) -> None:
        for m in self.members:
            m.model.to(self.device).eval()
            if self.device.type == "cuda":
                m.model.to(memory_format=torch.channels_last)
        self.sizes = sorted({m.size for m in self.members})
        self.size_index = [self.sizes.index(m.size) for m in self.members]
        g = self.guided
        self.guide_size = guide_shape(self.out_shape, g.scale) if g is not None else None

    def masks(self, batch: dict) -> np.ndarray:
        """uint8 (N, H, W) masks of one loader batch."""
        images = [normalise(batch[f"image{k}"], self.device) for k in range(len(self.sizes))]
        guide = to_guide(batch["guide"].to(self.device)) if self.guided is not None else None
        probs = ensemble_probs(
            self.members,
            images,
            self.size_index,
            self.out_shape,
            tta=self.tta,
            mode=self.mode,
            threshold=self.threshold,
            precision=self.precision,
            guide=guide,
            guided=self.guided,
        )
        return binarize(probs[:, 0], self.mode, self.threshold).to(torch.uint8).cpu().numpy()


def _write_batches(
    plan: _Plan,
    loader: DataLoader,
    todo: list[str],
    writer: Any,
    largest_component: bool,
    bar: Any,
    on_batch: Callable[[int], None] | None,
    done: int,
) -> int:
    """Predict every batch and hand its masks to the writer; returns the images predicted.

    RLE encoding (after the largest-component clean-up, if asked) runs in a thread while the
    next batch is inferred (OpenCV's labelling releases the GIL). The parts are joined into the
    submission only after validating every id once and every RLE; a failure aborts the writer.
    """
    from kaggle_utils.postprocess import keep_largest_components

    encoder = _Encoder(writer, prepare=keep_largest_components if largest_component else None)
    n = 0
    try:
        for batch in loader:
            masks = plan.masks(batch)
            encoder.put([todo[i] for i in batch["index"].tolist()], masks)
            n += len(masks)
            if bar is not None:
                bar.update(len(masks))
            if on_batch is not None:
                on_batch(done + n)
        encoder.join()
        writer.close(validate=True)
    except BaseException:
        encoder.join(raise_error=False)
        writer.abort()
        raise
    return n


# --------------------------------------------------------------------------------------------------
# scoring


def score_submission(
    submission: str | os.PathLike,
    truth: str | os.PathLike | pd.DataFrame,
    shape: tuple[int, int] | None = None,
) -> pd.DataFrame:
    """Per-image Dice of a submission against known truth (img, rle_mask), e.g. synthetic test masks.

    Only ids present in the submission are scored (a partial run scores its part). Returns a frame
    with img, dice; its mean is the Kaggle score.
    """
    from kaggle_utils.rle import rle_decode

    shape = tuple(shape or MASK_SHAPE)
    sub = pd.read_csv(submission, keep_default_na=False)
    true = truth if isinstance(truth, pd.DataFrame) else pd.read_csv(truth, keep_default_na=False)
    true = true.set_index("img")["rle_mask"]
    missing = [i for i in sub["img"] if i not in true.index]
    if missing:
        raise KeyError(f"{len(missing)} submission ids have no truth row (e.g. {missing[:5]})")
    rows = []
    for img, rle in zip(sub["img"], sub["rle_mask"], strict=True):
        pred = rle_decode(str(rle), shape, image_id=img)
        gt = rle_decode(str(true[img]), shape, image_id=img)
        rows.append((img, dice_masks(pred, gt)))
    return pd.DataFrame(rows, columns=["img", "dice"])
