"""Find and read the Carvana competition files where they are: a folder or Kaggle's zip archives.

On Kaggle the competition mounts as ``train.zip``, ``train_masks.zip``, ``test.zip`` (100k JPEGs),
... each holding one top-level folder. Extracting them would copy tens of GB to a small disk, so a
:class:`FileStore` reads members in place. The ``ZipFile`` is opened lazily and re-opened in each
process (keyed by pid), so a store can be handed to forked DataLoader workers safely.

`kaggle competitions download -c carvana-image-masking-challenge` saves one outer
``carvana-image-masking-challenge.zip`` holding those zips and the CSVs. An inner zip STORED in it
is a contiguous byte range of the outer file, so it is opened in place through a file window
(:class:`_Slice`), as fast as a loose zip. A DEFLATED inner zip cannot be seeked without
re-inflating it from its start at every read (bench/bench_outer_zip.py measures it), so the finder
stops at once with the one command that unpacks the outer archive, keeping the inner zips zipped.
"""

from __future__ import annotations

import functools
import io
import os
import shlex
import shutil
import struct
import sys
import threading
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_utils import environment
from kaggle_utils.constants import COMPETITION, MASK_SHAPE
from kaggle_utils.imageio import decode_jpeg, decode_mask_gif, jpeg_size

STORES = ("train", "train_hq", "train_masks", "test", "test_hq")
CSV_MASKS = "train_masks.csv"  # an index's `mask` where only the CSV's row holds the mask
CSVS = ("train_masks", "metadata", "sample_submission")
ENV_VAR = "KAGGLE_UTILS_DATA"
OUTER_ZIP = f"{COMPETITION}.zip"  # what `kaggle competitions download -c ...` saves


class _Slice(io.RawIOBase):
    """A read-only window ``[start, start + size)`` of a file, seekable as a file of its own: a
    zip STORED inside another zip opens through it in place (zipfile needs seek/tell/read only)."""

    def __init__(self, path: Path, start: int, size: int):
        super().__init__()
        self._f = open(path, "rb")  # noqa: SIM115 (closed with the window)
        self._start, self._size, self._pos = start, size, 0
        self.name = str(path)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError(f"seek before the start of {self.name}[{self._start}:]")
        self._pos = base + offset
        return self._pos

    def readinto(self, buf) -> int:  # noqa: ANN001 (any writable buffer)
        n = max(0, min(len(buf), self._size - self._pos))
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(memoryview(buf)[:n])
        self._pos += got
        return got

    def close(self) -> None:
        self._f.close()
        super().close()


class FileStore:
    """A flat collection of files addressed by basename: a folder, or a .zip read in place.

    ``inner``: the zip is the member ``inner`` (e.g. ``train.zip``) STORED inside the archive
    ``path`` (Kaggle's download); ``path`` stays the real file on disk.
    """

    def __init__(self, path: str | os.PathLike, inner: str | None = None):
        self.path = Path(path)
        self.inner = inner
        self.is_zip = inner is not None or self.path.suffix.lower() == ".zip"
        if self.is_zip and not self.path.is_file():
            raise FileNotFoundError(f"zip archive not found: {self.path}")
        if not self.is_zip and not self.path.is_dir():
            raise FileNotFoundError(f"folder not found: {self.path}")
        self._span = _stored_span(self.path, inner) if inner is not None else None
        self._zf: zipfile.ZipFile | None = None
        self._pid: int | None = None
        self._members: dict[str, str] | None = None  # basename -> member (zip only)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        inner = f", inner={self.inner!r}" if self.inner else ""
        return f"FileStore({str(self.path)!r}{inner})"

    @property
    def location(self) -> str:
        """The store for messages: ``…/train.zip``, or ``…/<outer>.zip:train.zip`` inside one."""
        return f"{self.path}:{self.inner}" if self.inner else str(self.path)

    # -- pickling (spawned workers): never ship an open handle ------------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_zf=None, _pid=None, _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _zip(self) -> zipfile.ZipFile:
        pid = os.getpid()
        if self._zf is None or self._pid != pid:
            # After fork the parent's handle shares a file offset with the child: never reuse it.
            try:
                if self._span is None:
                    self._zf = zipfile.ZipFile(self.path)
                else:
                    self._zf = zipfile.ZipFile(_Slice(self.path, *self._span))
            except (zipfile.BadZipFile, EOFError, OSError) as exc:
                raise self._broken(exc) from None
            self._pid = pid
        return self._zf

    def _broken(self, exc: BaseException, member: str | None = None) -> zipfile.BadZipFile:
        """One line: which archive (and member) is unreadable, how big it is, what to do."""
        try:
            size = f"{self.path.stat().st_size} bytes"
        except OSError:
            size = "size unknown"
        where = f"{self.location}:{member}" if member else self.location
        if self.inner:
            return zipfile.BadZipFile(
                f"{where} cannot be read ({type(exc).__name__}: {exc}; the outer archive has "
                f"{size}): it is truncated or corrupt; download it again (kaggle competitions "
                f"download -c {COMPETITION} -p {self.path.parent})"
            )
        stem = self.path.name[: -len(".zip")]
        return zipfile.BadZipFile(
            f"{where} cannot be read ({type(exc).__name__}: {exc}; the archive has {size}): it is "
            f"truncated or corrupt; download it again (kaggle competitions download -c "
            f"{COMPETITION} -f {self.path.name}) or extract it to a folder {stem}/ beside it"
        )

    def _index(self) -> dict[str, str]:
        if self._members is None:
            with self._lock:
                if self._members is None:
                    members: dict[str, str] = {}
                    for info in self._zip().infolist():
                        if info.is_dir() or info.filename.startswith("__MACOSX/"):
                            continue
                        base = info.filename.rsplit("/", 1)[-1]
                        if base and not base.startswith("."):
                            members.setdefault(base, info.filename)
                    self._members = members
        return self._members

    def names(self) -> list[str]:
        """Sorted basenames, e.g. ``00087a6bd4dc_01.jpg``."""
        if self.is_zip:
            return sorted(self._index())
        return sorted(
            e.name for e in os.scandir(self.path) if e.is_file() and not e.name.startswith(".")
        )

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if self.is_zip:
            return name in self._index()
        return (self.path / name).is_file()

    def __len__(self) -> int:
        return len(self._index()) if self.is_zip else len(self.names())

    def describe(self, name: str) -> str:
        """Where a file lives: ``…/train.zip:train/x.jpg`` or ``…/train/x.jpg``."""
        if self.is_zip:
            return f"{self.location}:{self._index().get(name, name)}"
        return str(self.path / name)

    def read_bytes(self, name: str) -> bytes:
        """The file's bytes; FileNotFoundError naming the store and the file when absent."""
        if self.is_zip:
            member = self._index().get(name)
            if member is None:
                raise FileNotFoundError(f"{name} not found in {self.location}")
            try:
                return self._zip().read(member)
            except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
                raise self._broken(exc, member) from None
        try:
            return (self.path / name).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"{name} not found in {self.path}") from None


def _stored_span(outer: Path, member: str) -> tuple[int, int]:
    """(start, size) of ``member``'s bytes in ``outer``; the unpack message unless STORED."""
    try:
        with zipfile.ZipFile(outer) as zf:
            info = zf.getinfo(member)
        with open(outer, "rb") as f:
            f.seek(info.header_offset)
            head = f.read(30)
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
        raise _outer_broken(outer, exc) from None
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        raise FileNotFoundError(_unpack_message(outer, [info]))
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        raise _outer_broken(outer, zipfile.BadZipFile(f"no local header for {member}"))
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


def _outer_broken(outer: Path, exc: BaseException) -> zipfile.BadZipFile:
    return zipfile.BadZipFile(
        f"{outer} cannot be read ({type(exc).__name__}: {exc}; {outer.stat().st_size} bytes): it "
        f"is truncated or corrupt; download it again (kaggle competitions download -c "
        f"{COMPETITION} -p {outer.parent})"
    )


@functools.lru_cache(maxsize=8)
def _outer_listing(path: str, mtime_ns: int, size: int) -> dict[str, zipfile.ZipInfo]:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise _outer_broken(Path(path), exc) from None
    out: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        base = info.filename.rsplit("/", 1)[-1]
        if not info.is_dir() and not info.filename.startswith("__MACOSX/") and base:
            out.setdefault(base, info)
    return out


def _outer_members(root: Path) -> dict[str, zipfile.ZipInfo]:
    """Basename -> member of ``root/carvana-image-masking-challenge.zip`` (empty without it);
    the listing is cached while the file is unchanged (the finder asks often)."""
    path = root / OUTER_ZIP
    try:
        st = path.stat()
    except OSError:
        return {}
    if not path.is_file():
        return {}
    return _outer_listing(str(path), st.st_mtime_ns, st.st_size)


def _unpack_message(outer: Path, infos: Sequence[zipfile.ZipInfo]) -> str:
    """One line: which inner zips cannot be read in place, why, and the command that unpacks."""
    names = ", ".join(i.filename for i in infos)
    need = sum(i.file_size for i in _outer_members(outer.parent).values())
    need_s = f"{need / 1e9:.1f} GB" if need >= 1e9 else f"{need / 1e6:.0f} MB"
    src, dst = shlex.quote(str(outer)), shlex.quote(str(outer.parent))
    if shutil.which("unzip"):
        cmd = f"unzip -o {src} -d {dst}"
    else:
        cmd = f"{shlex.quote(sys.executable)} -m zipfile -e {src} {dst}"
    verb = "is" if len(infos) == 1 else "are"
    return (
        f"{outer}: {names} {verb} compressed inside it, and a compressed inner zip re-inflates "
        f"from its start at every image read (~1.4 s an image for train.zip, "
        f"bench/bench_outer_zip.py); unpack it once, the inner zips stay zipped and are read in "
        f"place ({need_s} more on disk; {outer.name} can be deleted afterwards): {cmd}"
    )


def _find_store(root: Path, stem: str) -> FileStore | None:
    if (root / stem).is_dir():
        return FileStore(root / stem)
    if (root / f"{stem}.zip").is_file():
        return FileStore(root / f"{stem}.zip")
    info = _outer_members(root).get(f"{stem}.zip")
    if info is not None:
        return FileStore(root / OUTER_ZIP, inner=info.filename)
    return None


def _csv_names(stem: str) -> tuple[str, ...]:
    return (f"{stem}.csv", f"{stem}.csv.zip", f"{stem}.csv.gz")


def _find_csv(root: Path, stem: str) -> Path | None:
    """The CSV as a file in ``root``, else as a member of the outer archive: then a label
    ``<root>/<outer>.zip:<member>`` that names it in messages (read it with read_csv)."""
    for name in _csv_names(stem):
        if (root / name).is_file():
            return root / name
    members = _outer_members(root)
    for name in _csv_names(stem):
        if name in members:
            return Path(f"{root / OUTER_ZIP}:{members[name].filename}")
    return None


def _read_outer_csv(root: Path, stem: str) -> pd.DataFrame:
    """A CSV member of the outer archive (any compression: read once, start to end)."""
    members = _outer_members(root)
    info = next(members[n] for n in _csv_names(stem) if n in members)
    outer = root / OUTER_ZIP
    try:
        with zipfile.ZipFile(outer) as zf:
            raw = zf.read(info)
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
        raise _outer_broken(outer, exc) from None
    name = info.filename.lower()
    kind = "zip" if name.endswith(".zip") else "gzip" if name.endswith(".gz") else None
    return pd.read_csv(io.BytesIO(raw), compression=kind)


def _check_outer(root: Path) -> None:
    """Before any work: the one unpack command when an inner zip the data needs from the outer
    archive is compressed in it (a loose zip or folder of the same name is used instead)."""
    members = _outer_members(root)
    bad = [
        members[f"{s}.zip"]
        for s in STORES
        if f"{s}.zip" in members
        and not (root / s).is_dir()
        and not (root / f"{s}.zip").is_file()
        and members[f"{s}.zip"].compress_type != zipfile.ZIP_STORED
    ]
    if bad:
        raise FileNotFoundError(_unpack_message(root / OUTER_ZIP, bad))


def _looks_like_data(path: Path) -> bool:
    names = ("train", "train.zip", "train_hq", "train_hq.zip", "test", "test.zip")
    return (
        any((path / n).exists() for n in names)
        or any(_find_csv(path, s) is not None for s in ("train_masks", "sample_submission"))
        or any(n in _outer_members(path) for n in names if n.endswith(".zip"))
    )


MASK_SOURCES = ("auto", "csv", "gif")


class CompetitionData:
    """The competition files under one root; every read names the file it wanted when it fails.

    ``mask_source``: where training masks come from. "auto" takes the image's row of
    ``train_masks.csv`` when there is one (decoding Kaggle's RLE costs ~1.4 ms a mask, a GIF
    ~15 ms: the GIFs dominate loading small training sets), else the GIF; "gif" and "csv" use
    only that source. Kaggle's CSV is the GIFs' run-length encoding (tests check it on the
    real sample); choose "gif" if you edited the GIFs.
    """

    corrections = None  # corrections.Corrections (apply_corrections): replacement masks by id

    def __init__(self, root: str | os.PathLike, mask_source: str = "auto"):
        if mask_source not in MASK_SOURCES:
            raise ValueError(f"mask_source must be one of {MASK_SOURCES}, got {mask_source!r}")
        self.mask_source = mask_source
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data folder not found: {self.root}")
        _check_outer(self.root)
        self.train = _find_store(self.root, "train")
        self.train_hq = _find_store(self.root, "train_hq")
        self.train_masks = _find_store(self.root, "train_masks")
        self.test = _find_store(self.root, "test")
        self.test_hq = _find_store(self.root, "test_hq")
        self._rle: dict[str, str] | None = None
        self._rle_lock = threading.Lock()  # loaders decode masks from several threads
        self._shape: tuple[int, int] | None = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_rle_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._rle_lock = threading.Lock()

    def __repr__(self) -> str:
        have = [s for s in STORES if getattr(self, s) is not None]
        have += [f"{s}.csv" for s in CSVS if self.has_csv(s)]
        return f"CompetitionData({str(self.root)!r}, has={have})"

    # -- CSVs ------------------------------------------------------------------------------
    def csv_path(self, stem: str) -> Path:
        """The CSV's file; inside the outer archive a label ``…/<outer>.zip:<member>``."""
        path = _find_csv(self.root, stem)
        if path is None:
            raise FileNotFoundError(f"{stem}.csv (or {stem}.csv.zip) not found in {self.root}")
        return path

    def has_csv(self, stem: str) -> bool:
        return _find_csv(self.root, stem) is not None

    def read_csv(self, stem: str) -> pd.DataFrame:
        """``train_masks``, ``metadata``, ``sample_submission``, ... as .csv or Kaggle's .csv.zip,
        loose or inside the outer archive."""
        path = self.csv_path(stem)
        if path.is_file():
            return pd.read_csv(path)
        return _read_outer_csv(self.root, stem)

    # -- images ----------------------------------------------------------------------------
    def image_store(self, split: str = "train", hq: bool = False) -> FileStore:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        stem = f"{split}_hq" if hq else split
        store = getattr(self, stem)
        if store is None:
            raise FileNotFoundError(
                f"no {stem}/ folder or {stem}.zip in {self.root} (nor in {OUTER_ZIP})"
            )
        return store

    def load_image(
        self,
        image_id: str,
        split: str = "train",
        size: tuple[int, int] | None = None,
        hq: bool = False,
    ) -> np.ndarray:
        """RGB uint8 (H, W, 3); at ``size`` (H, W) via reduced JPEG decoding when given."""
        store = self.image_store(split, hq)
        name = _jpg(image_id)
        return decode_jpeg(store.read_bytes(name), size, name=store.describe(name))

    def image_shape(self, image_id: str, split: str = "train") -> tuple[int, int]:
        """(H, W) of an image from its JPEG header."""
        store = self.image_store(split)
        name = _jpg(image_id)
        return jpeg_size(store.read_bytes(name), store.describe(name))

    # -- masks -----------------------------------------------------------------------------
    def mask_name(self, image_id: str) -> str:
        return f"{_stem(image_id)}_mask.gif"

    def _rle_table(self) -> dict[str, str]:
        with self._rle_lock:
            if self._rle is None:
                df = self.read_csv("train_masks")
                missing = {"img", "rle_mask"} - set(df.columns)
                if missing:
                    path = self.csv_path("train_masks")
                    raise ValueError(f"{path} lacks columns {sorted(missing)}")
                self._rle = dict(zip(df["img"].astype(str), df["rle_mask"], strict=True))
        return self._rle

    def _csv_rle(self, image_id: str) -> str | float | None:
        """The image's train_masks.csv cell (NaN: an empty mask); None without the CSV or row."""
        if self.mask_source == "gif" or (self._rle is None and not self.has_csv("train_masks")):
            return None
        return self._rle_table().get(_jpg(image_id))

    @property
    def _gif_store(self) -> FileStore | None:
        """Where mask GIFs are read from (none when ``mask_source`` is "csv")."""
        return None if self.mask_source == "csv" else self.train_masks

    def has_mask(self, image_id: str) -> bool:
        store = self._gif_store
        if store is not None and self.mask_name(image_id) in store:
            return True
        return self._csv_rle(image_id) is not None

    def mask_sources(self, image_ids: Sequence[str]) -> list[str | None]:
        """Per image, what holds its mask under ``mask_source``: the GIF's name, else
        ``"train_masks.csv"`` (its row), else None (``load_mask`` would fail). One listing of
        the GIFs and one read of the CSV, so 5k images cost milliseconds, not a lookup each."""
        store = self._gif_store
        gifs = set(store.names()) if store is not None else set()
        use_csv = self.mask_source != "gif" and self.has_csv("train_masks")
        rows = self._rle_table() if use_csv else {}
        out: list[str | None] = []
        for image_id in image_ids:
            gif = self.mask_name(image_id)
            out.append(gif if gif in gifs else CSV_MASKS if _jpg(image_id) in rows else None)
        return out

    def load_mask(self, image_id: str) -> np.ndarray:
        """uint8 {0, 1} mask at the image's full size, from ``mask_source`` (see the class);
        the corrected mask where ``corrections`` holds one (kaggle_utils.corrections)."""
        if self.corrections is not None and image_id in self.corrections:
            return self.corrections.mask(image_id)
        name = self.mask_name(image_id)
        rle = self._csv_rle(image_id)
        if rle is not None:
            from kaggle_utils.rle import rle_decode

            try:
                return rle_decode(rle, self._mask_shape(image_id), image_id=_stem(image_id))
            except ValueError as err:
                raise ValueError(
                    f"{self.csv_path('train_masks')}, row {_jpg(image_id)}: {err}"
                ) from err
        store = self._gif_store
        if store is not None and name in store:
            return decode_mask_gif(store.read_bytes(name), name=store.describe(name))
        where = (
            f"in {store.path}" if store is not None else f"(no train_masks store in {self.root})"
        )
        csv = (
            f"no row {_jpg(image_id)!r} in {self.csv_path('train_masks')}"
            if self.has_csv("train_masks")
            else "no train_masks.csv"
        )
        raise FileNotFoundError(f"mask {name} not found {where}, and {csv}")

    def _mask_shape(self, image_id: str) -> tuple[int, int]:
        # Every image of a competition has one size; read it once from a JPEG header.
        if self._shape is None:
            try:
                self._shape = self.image_shape(image_id)
            except (FileNotFoundError, ValueError):
                return MASK_SHAPE
        return self._shape


def _stem(image_id: str) -> str:
    image_id = str(image_id)
    return image_id[:-4] if image_id.lower().endswith(".jpg") else image_id


def _jpg(image_id: str) -> str:
    return f"{_stem(image_id)}.jpg"


def _looks_like_carvana(path: Path) -> bool:
    """Stricter test for other Kaggle mounts: train images plus masks (GIFs or the CSV)."""
    has_train = any((path / n).exists() for n in ("train", "train.zip", "train_hq", "train_hq.zip"))
    has_train = has_train or any(n in _outer_members(path) for n in ("train.zip", "train_hq.zip"))
    has_masks = _find_store(path, "train_masks") is not None or _find_csv(path, "train_masks")
    return has_train and bool(has_masks)


def _kaggle_candidates() -> list[Path]:
    """The competition mount first, then other /kaggle/input mounts (and one level below)."""
    base = environment.KAGGLE_INPUT
    found = [base / COMPETITION, base / "competitions" / COMPETITION]
    if base.is_dir():
        for mount in sorted(p for p in base.iterdir() if p.is_dir()):
            found += [mount, *sorted(p for p in mount.iterdir() if p.is_dir())]
    return found


SYNTHETIC_DEFAULT = Path("data") / "synthetic"  # where `make demo` writes its data


def _given_root(data_dir: str | os.PathLike) -> Path:
    """The folder `data_dir` names: absolute as given, relative under the project root or the cwd
    (environment.path_candidates); the error lists every absolute path tried."""
    tried = environment.path_candidates(data_dir)
    if environment.on_kaggle():  # as before: the cwd (/kaggle/working) only
        given = Path(data_dir).expanduser()
        tried = [given if given.is_absolute() else Path.cwd() / given]
    for root in tried:
        if root.is_dir():
            return root
    raise FileNotFoundError(
        f"data folder not found: {' or '.join(map(str, tried))}; pass an absolute data_dir, or "
        "a path relative to the project root (the folder holding params/)"
    )


def _synthetic_fallback() -> Path | None:
    """<project root>/data/synthetic from `make demo`, only away from Kaggle (no input mount):
    on Kaggle a missing competition must say so, never train on the demo's data silently."""
    root = environment.project_root()
    if environment.KAGGLE_INPUT.is_dir() or root is None:
        return None
    path = root / SYNTHETIC_DEFAULT
    return path if path.is_dir() and _looks_like_data(path) else None


def _in_folder(root: Path, mask_source: str) -> CompetitionData:
    if _looks_like_data(root):
        return CompetitionData(root, mask_source)
    subs = sorted(p for p in root.iterdir() if p.is_dir() and _looks_like_data(p))
    if subs:
        return CompetitionData(subs[0], mask_source)
    raise FileNotFoundError(
        f"{root} holds no Carvana files: expected train/ or train.zip, train_masks/ or "
        "train_masks.csv, test/ or test.zip, metadata.csv, sample_submission.csv, or Kaggle's "
        f"download {OUTER_ZIP} holding them"
    )


def find_data(
    data_dir: str | os.PathLike | None = None, mask_source: str = "auto"
) -> CompetitionData:
    """The competition files: ``data_dir``, else $KAGGLE_UTILS_DATA, else a Kaggle input mount,
    else (away from Kaggle) ``<project root>/data/synthetic`` written by ``make demo``.

    A relative ``data_dir`` is looked up under the project root first (the folder holding
    ``params/``), then from the cwd, so a notebook kernel started in ``notebooks/`` finds
    ``data/synthetic`` as ``make demo`` wrote it. A given folder may also hold the data one level
    down (e.g. ``/kaggle/input``). ``mask_source``: see :class:`CompetitionData`.
    """
    if data_dir is None and os.environ.get(ENV_VAR):
        data_dir = os.environ[ENV_VAR]
    if data_dir is not None:
        return _in_folder(_given_root(data_dir), mask_source)
    for i, cand in enumerate(_kaggle_candidates()):
        check = _looks_like_data if i < 2 else _looks_like_carvana
        if cand.is_dir() and check(cand):
            return CompetitionData(cand, mask_source)
    fallback = _synthetic_fallback()
    if fallback is not None:
        return CompetitionData(fallback, mask_source)
    root = environment.project_root()
    if root is None:
        demo = "no project root (no params/ folder at or above the cwd)"
    elif environment.KAGGLE_INPUT.is_dir():
        demo = f"not {root / SYNTHETIC_DEFAULT} (a Kaggle input mount exists)"
    else:
        demo = f"{root / SYNTHETIC_DEFAULT} (no data there)"
    raise FileNotFoundError(
        f"no Carvana data found (tried {environment.KAGGLE_INPUT.resolve()}/*, {demo}): pass "
        f"data_dir=..., set ${ENV_VAR}, run `make demo` (writes data/synthetic), attach the "
        f"competition '{COMPETITION}' to the Kaggle notebook (mounted under "
        f"{environment.KAGGLE_INPUT}), download it with `kaggle competitions download -c "
        f"{COMPETITION}`, or generate a synthetic set with `python -m kaggle_utils.synthetic OUT`"
    )
