"""Streamed test-set prediction: members at their own resolution, 05's TTA, a resumable submission.

The submit path never holds more than a few batches of masks: a DataLoader's workers read and decode
the test JPEGs (folder or zip, in place), the model(s) run on the device through
`inference.ensemble_probs` (the forward pass validation scores, under the same precision policy),
probabilities are averaged and upsampled to the full frame on the device, thresholded, and the
uint8 masks go to `submission.SubmissionWriter` from a background thread (RLE encode overlaps the
next batch's inference; the writer's own threads compress), whose chunk files make an interrupted
run resumable (`submit_resume` refuses another ensemble's parts). The finished file is validated
before it is declared done. The test images themselves: `testset`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from kaggle_utils.config import GuidedFilterConfig
from kaggle_utils.constants import MASK_SHAPE
from kaggle_utils.imageio import guide_shape
from kaggle_utils.inference import (
    Member,
    binarize,
    dice_masks,
    ensemble_probs,
    normalise,
    pick_device,
)
from kaggle_utils.locks import submission_lock
from kaggle_utils.precision import precision_for
from kaggle_utils.refine import to_guide
from kaggle_utils.submit_resume import check_resume, resume_settings, save_fingerprint
from kaggle_utils.testset import TestImages, ids_to_predict, image_shape, select_shard
from kaggle_utils.tta import TTASetting, parse_setting

# --------------------------------------------------------------------------------------------------
# settings


def submit_settings(spec: dict, cfg: Any = None) -> dict[str, Any]:
    """``predict_submission`` keyword arguments from 05's ensemble spec: tta, combine mode,
    threshold and the post-processing 05 recorded; where 05 predates a setting, the ensemble
    file's (``cfg``, an ``EnsembleConfig``) is used. tta is the `kaggle_utils.tta` setting 05
    chose (a spec without one: hflip, as 06 always predicted before 05 recorded it)."""

    def pick(key: str, default: Any) -> Any:
        if key in spec:
            return spec[key]
        return getattr(cfg, key, default) if cfg is not None else default

    return {
        "tta": parse_setting(spec.get("tta", True)).record,  # validated; true/false/names
        "mode": spec.get("combine", "mean"),
        "threshold": float(spec["threshold"]),
        "largest_component": bool(pick("largest_component", False)),
        "guided": pick("guided_filter", None),  # a dict from 05, a GuidedFilterConfig from cfg
    }


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
    hq: bool | None = None,
    tta: bool | str | Sequence[str] | TTASetting = True,
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
    shard: int | None = None,
    n_shards: int | None = None,
) -> PredictResult:
    """Predict every selected test image and write a validated `submission.csv.gz` (resumable).

    data: a `layout.CompetitionData`. limit: see `testset.select_ids`. hq: read test_hq (None:
    when every member was trained on train_hq, as its checkpoint records). on_batch(n_done) is
    called after each batch is handed to the writer (progress hooks; tests use it to interrupt a
    run for real).
    amp: mixed precision on CUDA (None: on; bf16 where the GPU has it, else fp16, as
    `precision.precision_for` decides for training); the CPU predicts in fp32.
    chunk_size: rows per resumable part; encode_workers: compression threads of the writer;
    cpu_threads: torch threads on the CPU (None: the cores the decode workers leave free).
    restart: drop the parts of an interrupted run instead of resuming it. Parts written by a
    different ensemble (checkpoints, weights, threshold, TTA, mode) are never resumed silently.
    largest_component: keep each mask's largest connected component (``postprocess``).
    tta: a bool (hflip on/off) or any `kaggle_utils.tta` setting (05's `submit_settings`).
    guided: upsample with the photo as guide (``refine``; a ``GuidedFilterConfig`` or its dict).
    shard, n_shards: predict only shard ``shard`` of ``n_shards`` (contiguous, sample order) into
    ``shards.shard_path(out_path, ...)``; ``shards.merge_shards`` joins them into ``out_path``.
    """
    from kaggle_utils.submission import SubmissionWriter

    if not members:
        raise ValueError("predict_submission needs at least one member")
    dev = pick_device(device)
    if hq is None:
        hq = all(m.info.get("hq") for m in members)
    store, all_ids = ids_to_predict(data, hq, limit)
    ids = select_shard(all_ids, shard, n_shards)  # every id when both are None
    out_shape = image_shape(store, ids[0])  # MASK_SHAPE on Kaggle; smaller synthetic sets differ
    guided = GuidedFilterConfig.model_validate(guided) if guided is not None else None
    precision = precision_for(dev, amp=amp is None or bool(amp))  # None: mixed on CUDA
    tta = parse_setting(tta)
    plan = _Plan(members, dev, out_shape, tta, mode, threshold, guided, precision)
    out_path = Path(out_path)
    if n_shards is not None:
        from kaggle_utils.shards import shard_path

        out_path = shard_path(out_path, shard, n_shards)  # type: ignore[arg-type]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # one writer per submission: a second 06 on this file fails here, naming the first
    with submission_lock(out_path):
        settings = resume_settings(tta.record, mode, threshold, largest_component, guided)
        check_resume(out_path, members, **settings, restart=restart)
        if n_shards is not None:
            from kaggle_utils.shards import begin_shard, ensemble_key

            key = ensemble_key(members, settings)
            begin_shard(out_path, shard, n_shards, all_ids, out_shape, key)  # type: ignore[arg-type]
        writer = SubmissionWriter(
            out_path, ids, chunk_size=chunk_size, shape=out_shape, workers=encode_workers
        )
        save_fingerprint(out_path, members, **settings)
        todo = writer.pending_ids()
        done = len(ids) - len(todo)
        if done:
            print(
                f"resuming {out_path.name}: {done} of {len(ids)} images already written", flush=True
            )
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
            raise RuntimeError(
                f"{out_path} was not written: {len(writer.pending_ids())} rows pending"
            )
        seconds = time.perf_counter() - started
        rate = n / seconds if seconds > 0 else float("nan")
        print(
            f"wrote {out_path} ({len(ids)} images; {n} predicted now in {seconds:.1f} s, "
            f"{rate:.2f} images/s, {plan.precision}); validated",
            flush=True,
        )
        return PredictResult(out_path, len(ids), seconds, rate, out_shape, done)


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
    tta: TTASetting
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
