"""Streamed test-set prediction: members at their own resolution, hflip TTA, a resumable submission.

The submit path never holds more than a few batches of masks: a DataLoader's workers read and decode
the test JPEGs (folder or zip, in place), the model(s) run on the device, probabilities are averaged
and upsampled to the full frame on the device, thresholded, and the uint8 masks go to
`submission.SubmissionWriter` from a background thread (RLE encode overlaps the next batch's
inference; the writer's own threads compress), whose chunk files make an interrupted run
resumable. The finished file is validated before it is declared done.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from kaggle_utils.config import GuidedFilterConfig
from kaggle_utils.refine import gray_guide, guide_shape, guided_upsample, to_guide

COMPETITION = "carvana-image-masking-challenge"
MODES = ("mean", "vote")


# --------------------------------------------------------------------------------------------------
# members


@dataclass
class Member:
    """One trained model ready to predict: its network, input size (H, W) and ensemble weight."""

    name: str
    model: torch.nn.Module
    size: tuple[int, int]
    weight: float = 1.0
    checkpoint: str = ""
    info: dict = field(default_factory=dict)


def load_members(
    checkpoints: Sequence[str | os.PathLike],
    weights: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
    names: Sequence[str] | None = None,
) -> list[Member]:
    """Load member checkpoints for inference; a missing file fails naming its path."""
    from kaggle_utils.checkpoint import load_member_model

    if not checkpoints:
        raise ValueError("no member checkpoints given: an ensemble needs at least one member")
    if weights is not None and len(weights) != len(checkpoints):
        raise ValueError(f"{len(weights)} weights for {len(checkpoints)} member checkpoints")
    members = []
    for i, path in enumerate(checkpoints):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"member checkpoint not found: {path}")
        model, info = load_member_model(path, device=device)
        model.eval()
        size = tuple(int(s) for s in info["size"])
        name = names[i] if names else str(info.get("member") or path.parent.parent.name)
        w = float(weights[i]) if weights is not None else 1.0
        members.append(Member(name, model, size, w, str(path), dict(info)))  # type: ignore[arg-type]
    if sum(m.weight for m in members) <= 0:
        raise ValueError(
            f"member weights must have a positive sum, got {[m.weight for m in members]}"
        )
    return members


def members_from_ensemble(
    ensemble: dict,
    run_dir: str | os.PathLike | Sequence[str | os.PathLike],
    device: str | torch.device = "cpu",
) -> list[Member]:
    """Members named by an `ensemble.yaml` (05's output); checkpoint paths relative to run_dir.

    run_dir may be several folders (the run folder and its upstream copies on Kaggle): a relative
    checkpoint is taken from the first that holds it. Members weighted 0 by the OOF search are
    skipped (they cannot change the average).
    """
    roots = (
        [Path(run_dir)] if isinstance(run_dir, (str, os.PathLike)) else [Path(r) for r in run_dir]
    )
    specs = ensemble.get("members") or []
    if not specs:
        raise ValueError("ensemble.yaml lists no members")
    dropped = [s.get("name", s["checkpoint"]) for s in specs if float(s.get("weight", 1.0)) <= 0]
    if dropped:
        print(f"members with weight 0 are not run: {', '.join(map(str, dropped))}", flush=True)
    specs = [s for s in specs if float(s.get("weight", 1.0)) > 0]
    if not specs:
        raise ValueError("every member of the ensemble has weight 0")
    paths = []
    for spec in specs:
        p = Path(spec["checkpoint"])
        if not p.is_absolute():
            p = next((r / p for r in roots if (r / p).is_file()), roots[0] / p)
        paths.append(p)
    return load_members(
        paths,
        weights=[float(s.get("weight", 1.0)) for s in specs],
        device=device,
        names=[str(s.get("name", Path(s["checkpoint"]).parent.parent.name)) for s in specs],
    )


def submit_ensemble(run_dir: str | os.PathLike) -> tuple[dict, Path]:
    """05's ensemble.yaml from the run folder (or an upstream kernel's copy) and the folder its
    checkpoint paths are relative to; without one, equal weights over each member's best stage."""
    from kaggle_utils.ensemble import default_spec, read_ensemble
    from kaggle_utils.environment import run_dir_candidates

    candidates = run_dir_candidates(run_dir)
    for folder in candidates:
        if (folder / "ensemble.yaml").is_file():
            print(f"ensemble: {folder / 'ensemble.yaml'}", flush=True)
            return read_ensemble(folder / "ensemble.yaml"), folder
    folders = [c for c in candidates if c.is_dir()]
    if not folders:
        raise FileNotFoundError(
            f"run folder not found: {', '.join(map(str, candidates))} (train members first)"
        )
    print(
        f"no ensemble.yaml in {', '.join(map(str, folders))} (05_ensemble not run): "
        "equal weights over each member's best stage, threshold 0.5",
        flush=True,
    )
    return default_spec(folders[0]), folders[0]


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


# --------------------------------------------------------------------------------------------------
# images


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
# inference


def _normalise(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    from kaggle_utils.dataset import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.as_tensor(np.asarray(IMAGENET_MEAN, np.float32) * 255.0, device=device)
    std = torch.as_tensor(np.asarray(IMAGENET_STD, np.float32) * 255.0, device=device)
    x = x.to(device, non_blocking=True).float()
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, (tuple, list)):  # deep supervision in train mode: main output first
        out = out[0]
    return out.float()


@torch.inference_mode()
def member_probs(
    model: torch.nn.Module, x: torch.Tensor, tta: bool = True, amp: bool | None = None
) -> torch.Tensor:
    """Sigmoid probabilities (N,1,h,w) at the input size, averaged with the hflipped pass when tta.

    amp: bf16 autocast (None: on CUDA only).
    """
    use_amp = x.device.type == "cuda" if amp is None else amp
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_amp):
        if tta:
            both = _logits(model, torch.cat([x, x.flip(-1)]))
            n = x.shape[0]
            return (torch.sigmoid(both[:n]) + torch.sigmoid(both[n:]).flip(-1)) * 0.5
        return torch.sigmoid(_logits(model, x))


@torch.inference_mode()
def ensemble_probs(
    members: Sequence[Member],
    images: Sequence[torch.Tensor],
    size_index: Sequence[int],
    out_shape: tuple[int, int],
    tta: bool = True,
    mode: str = "mean",
    threshold: float = 0.5,
    amp: bool | None = None,
    guide: torch.Tensor | None = None,
    guided: GuidedFilterConfig | None = None,
) -> torch.Tensor:
    """Weighted ensemble at full resolution (N,1,H,W): mean of probabilities or a weighted vote
    (`blend_probs` of each member's probabilities on its own input size)."""
    probs = [
        member_probs(m.model, images[k], tta, amp) for m, k in zip(members, size_index, strict=True)
    ]
    weights = [m.weight for m in members]
    return blend_probs(probs, weights, out_shape, mode, threshold, guide=guide, guided=guided)


def blend_probs(
    probs: Sequence[torch.Tensor],
    weights: Sequence[float],
    out_shape: tuple[int, int],
    mode: str = "mean",
    threshold: float = 0.5,
    guide: torch.Tensor | None = None,
    guided: GuidedFilterConfig | None = None,
) -> torch.Tensor:
    """Members' probabilities (N,1,h_m,w_m) -> the weighted blend (N,1,H,W) at full resolution.

    guide, guided: upsample through ``refine.guided_upsample`` with this gray guide (N,1,h,w)
    first. Bilinear upsampling and the guided filter are both linear in the probabilities, so
    members sharing a size are summed before one upsample, and the mean is filtered once.
    Shared by the submission (06) and the OOF score of what it submits (05).
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: choose from {', '.join(MODES)}")
    if (guide is None) != (guided is None):
        raise ValueError("blend_probs needs both guide and guided, or neither")

    def upsample(p: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(p.shape[-2:]) == tuple(size):
            return p
        return F.interpolate(p, size=size, mode="bilinear", align_corners=False)

    def to_full(p: torch.Tensor) -> torch.Tensor:
        if guided is not None:
            p = guided_upsample(p, guide, guided.radius, guided.eps)
        return upsample(p, out_shape)

    total = float(sum(weights))
    by_size: dict[tuple[int, ...], torch.Tensor] = {}
    for p, weight in zip(probs, weights, strict=True):
        key = tuple(p.shape[-2:])
        if mode == "vote":
            p, key = (to_full(p) > threshold).float(), ()
        p = p * (weight / total)
        by_size[key] = p if key not in by_size else by_size[key] + p
    if mode == "vote":
        return by_size[()]
    if guided is not None:  # one guided filter on the weighted mean, at the guide's size
        size = tuple(guide.shape[-2:])
        return to_full(sum(upsample(p, size) for p in by_size.values()))
    return sum(upsample(p, out_shape) for p in by_size.values())


def binarize(probs: torch.Tensor, mode: str, threshold: float) -> torch.Tensor:
    """The masks of ``blend_probs``'s output: the mean above the threshold, or a weighted vote
    above one half (its members were thresholded already; a tie is no majority)."""
    return probs > (0.5 if mode == "vote" else threshold)


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """None/"auto": cuda when present, else cpu."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
    shape: tuple[int, int] = (1280, 1918)
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
    chunk_size: rows per resumable part; encode_workers: compression threads of the writer;
    cpu_threads: torch threads on the CPU (None: the cores the decode workers leave free).
    restart: drop the parts of an interrupted run instead of resuming it. Parts written by a
    different ensemble (checkpoints, weights, threshold, TTA, mode) are never resumed silently.
    largest_component: keep each mask's largest connected component (``postprocess``).
    guided: upsample with the photo as guide (``refine``; a ``GuidedFilterConfig`` or its dict).
    """
    from kaggle_utils.postprocess import keep_largest_components
    from kaggle_utils.submission import SubmissionWriter

    if not members:
        raise ValueError("predict_submission needs at least one member")
    dev = pick_device(device)
    store = data.test_hq if hq else data.test
    if store is None:
        raise FileNotFoundError(
            f"no {'test_hq' if hq else 'test'} images (folder or zip) under {data.root}"
        )
    sample = data.read_csv("sample_submission")
    if "img" not in sample.columns:
        raise ValueError(f"sample_submission.csv under {data.root} has no 'img' column")
    ids = select_ids(sample["img"].astype(str).tolist(), store.names(), limit)
    out_shape = image_shape(store, ids[0])  # 1280x1918 on Kaggle; smaller synthetic sets differ
    for m in members:
        m.model.to(dev).eval()
        if dev.type == "cuda":
            m.model.to(memory_format=torch.channels_last)
    sizes = sorted({m.size for m in members})
    size_index = [sizes.index(m.size) for m in members]

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    settings = {"tta": tta, "mode": mode, "threshold": threshold}
    if largest_component:  # only when on: earlier runs' fingerprints stay valid
        settings["largest_component"] = True
    guide_size = None
    if guided is not None:
        guided = GuidedFilterConfig.model_validate(guided)
        guide_size = guide_shape(out_shape, guided.scale)
        settings["guided_filter"] = guided.model_dump()
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
        TestImages(store, todo, sizes, guide_size),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=dev.type == "cuda",
        prefetch_factor=2 if workers > 0 else None,
    )
    if dev.type == "cpu":
        from kaggle_utils.allocator import keep_freed_memory

        keep_freed_memory()  # full-resolution batches: reuse freed memory, no page faults
    if cpu_threads is None and dev.type == "cpu":
        # decode workers and the encoder share the cores; an oversubscribed torch pool is far
        # slower than a smaller one (see ensemble.single_thread)
        cpu_threads = max(1, (os.cpu_count() or 1) - workers)
    old_threads = torch.get_num_threads()
    if cpu_threads:
        torch.set_num_threads(cpu_threads)
    started = time.perf_counter()
    n = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(ids), initial=done, desc="predict", unit="img")
    # RLE-encodes (after the largest-component clean-up, if asked) in a thread while the next
    # batch is inferred; OpenCV's labelling releases the GIL
    encoder = _Encoder(writer, prepare=keep_largest_components if largest_component else None)
    try:
        for batch in loader:
            images = [_normalise(batch[f"image{k}"], dev) for k in range(len(sizes))]
            guide = to_guide(batch["guide"].to(dev)) if guided is not None else None
            probs = ensemble_probs(
                members,
                images,
                size_index,
                out_shape,
                tta=tta,
                mode=mode,
                threshold=threshold,
                guide=guide,
                guided=guided,
            )
            masks = binarize(probs[:, 0], mode, threshold).to(torch.uint8).cpu().numpy()
            encoder.put([todo[i] for i in batch["index"].tolist()], masks)
            n += len(masks)
            if bar is not None:
                bar.update(len(masks))
            if on_batch is not None:
                on_batch(done + n)
        encoder.join()
        # joins the parts into out_path only after validating every id once and every RLE
        writer.close(validate=True)
    except BaseException:
        encoder.join(raise_error=False)
        writer.abort()
        raise
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
        f"{rate:.2f} images/s); validated",
        flush=True,
    )
    return PredictResult(out_path, len(ids), seconds, rate, out_shape, done)


# --------------------------------------------------------------------------------------------------
# scoring and submitting


def dice_masks(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two {0,1} masks; empty vs empty counts as 1 (Kaggle's rule)."""
    p = pred.astype(bool)
    t = truth.astype(bool)
    denom = int(p.sum()) + int(t.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(p, t).sum()) / denom


def score_submission(
    submission: str | os.PathLike,
    truth: str | os.PathLike | pd.DataFrame,
    shape: tuple[int, int] | None = None,
) -> pd.DataFrame:
    """Per-image Dice of a submission against known truth (img, rle_mask), e.g. synthetic test masks.

    Only ids present in the submission are scored (a partial run scores its part). Returns a frame
    with img, dice; its mean is the Kaggle score.
    """
    from kaggle_utils.layout import MASK_SHAPE
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


def kaggle_credentials() -> bool:
    """Whether the kaggle CLI would find credentials (env vars or kaggle.json)."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    if os.environ.get("KAGGLE_API_TOKEN"):
        return True
    config = os.environ.get("KAGGLE_CONFIG_DIR")
    folders = [Path(config)] if config else []
    folders += [Path.home() / ".kaggle", Path.home() / ".config" / "kaggle"]
    return any((f / "kaggle.json").is_file() for f in folders)


def kaggle_cli() -> str | None:
    """The kaggle executable: on PATH or beside this Python (a venv not activated)."""
    found = shutil.which("kaggle")
    if found:
        return found
    beside = Path(sys.executable).with_name("kaggle")
    return str(beside) if beside.is_file() else None


def kaggle_submit(
    path: str | os.PathLike, message: str, competition: str = COMPETITION, dry_run: bool = False
) -> bool:
    """`kaggle competitions submit -c … -f … -m …` when the CLI and credentials exist.

    Returns True when submitted; prints a clear reason and returns False when it cannot.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"submission file not found: {path}")
    exe = kaggle_cli()
    if exe is None:
        print("not submitting: the kaggle CLI is not installed (pip install kaggle)", flush=True)
        return False
    if not kaggle_credentials():
        print(
            "not submitting: no Kaggle credentials (put kaggle.json in ~/.kaggle/ or set "
            "KAGGLE_USERNAME and KAGGLE_KEY); submit by hand with:\n"
            f"  kaggle competitions submit -c {competition} -f {path} -m {message!r}",
            flush=True,
        )
        return False
    cmd = [exe, "competitions", "submit", "-c", competition, "-f", str(path), "-m", message]
    print("$", " ".join(cmd), flush=True)
    if dry_run:
        return False
    subprocess.run(cmd, check=True)
    return True
