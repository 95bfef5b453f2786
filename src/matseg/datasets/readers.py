"""Image readers: files on disk -> arrays, with one clear error for every way a file can be bad.

One registry maps a file extension to a reader. Every reader returns the array as stored
(dtype untouched) so masks keep their exact values; ``to_channels_first`` and ``normalise`` turn
an image into the float32 (C, H, W) array the models take.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from matseg.datasets.afm import AFM_EXTENSIONS
from matseg.errors import DataError, not_a_file

Reader = Callable[[Path], np.ndarray]

DEFAULT_MAX_PIXELS = 2**31  # 2.1 G pixels (46341 px square, or 1290 slices of 1290 x 1290)


def max_pixels() -> int:
    """The largest image (pixels x pages x channels) a reader decodes: ``MATSEG_MAX_PIXELS``,
    else 2^31. A header declaring more is refused before any pixel is decoded, so a
    decompression bomb (a few kB declaring 10^10 pixels) costs nothing."""
    value = os.environ.get("MATSEG_MAX_PIXELS", "")
    try:
        return int(value) if value else DEFAULT_MAX_PIXELS
    except ValueError:
        raise DataError(
            "MATSEG_MAX_PIXELS", "a whole number of pixels", repr(value), "e.g. 4000000000"
        ) from None


def check_declared_size(path: Path, shape: Sequence[int]) -> None:
    """Refuse a file whose header declares more than :func:`max_pixels` values."""
    count, limit = math.prod(int(s) for s in shape), max_pixels()
    if count > limit:
        raise DataError(
            str(path),
            f"at most {limit:,} pixels (the limit MATSEG_MAX_PIXELS sets)",
            f"a header declaring {' x '.join(map(str, shape))} = {count:,}",
            "raise MATSEG_MAX_PIXELS if the file is genuine, or tile the mosaic",
        )


def _open_pil(path: Path) -> Image.Image:
    """The image with only its header read. Pillow's own bomb check refuses anything over
    179 M pixels, which real SEM mosaics pass; matseg checks the declared size against its own
    (configurable) limit instead, so Pillow's is off while it reads the header."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        return Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(str(path), "an image file", not_a_file(path), "check the path in the spec")
    if path.stat().st_size == 0:
        raise DataError(str(path), "an image file", "a zero-byte file", "re-export or remove it")


def _read_pil(path: Path) -> np.ndarray:
    """PNG / JPEG / BMP through Pillow; palette images keep their indices (masks often are)."""
    try:
        with _open_pil(path) as im:
            check_declared_size(path, (im.size[1], im.size[0], len(im.getbands())))
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(im, dtype=np.uint16)
            if im.mode == "CMYK":
                im = im.convert("RGB")
            if im.mode in ("LA", "PA"):
                im = im.convert("RGBA")
            return np.asarray(im)
    except UnidentifiedImageError:
        raise DataError(
            str(path), "a readable image", "bytes no image decoder recognises", "is it truncated?"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            str(path), "a complete image", f"a damaged file ({exc})", "re-export the image"
        ) from None


def _read_tiff(path: Path) -> np.ndarray:
    """TIFF (8/16-bit, float, multi-page) through tifffile; pages stack on the first axis."""
    try:
        # is_shaped=False: some overlays carry stale 'shaped' metadata that only produces warnings.
        with tifffile.TiffFile(path, is_shaped=False) as tif:
            if tif.series:
                check_declared_size(path, tif.series[0].shape)
            array = np.asarray(tif.asarray())
    # RuntimeError: imagecodecs raises it (e.g. DeflateError) for truncated compressed strips.
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError, RuntimeError) as exc:
        raise DataError(
            str(path), "a complete TIFF file", f"a damaged file ({exc})", "re-export the image"
        ) from None
    if array.size == 0:
        raise DataError(
            str(path), "a TIFF with image data", "no readable pages", "is it truncated?"
        )
    return array


def _read_npy(path: Path) -> np.ndarray:
    """NumPy .npy arrays (AFM channel stacks, float images); pickles are refused."""
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)  # the header only, so far
        check_declared_size(path, mapped.shape)
        return np.array(mapped)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(
            str(path), "a plain .npy array", f"an unreadable file ({exc})", "save with np.save"
        ) from None


READERS: dict[str, Reader] = {
    ".png": _read_pil,
    ".jpg": _read_pil,
    ".jpeg": _read_pil,
    ".bmp": _read_pil,
    ".tif": _read_tiff,
    ".tiff": _read_tiff,
    ".npy": _read_npy,
}
# Files that often sit beside images and are not images: listed as notes, never as errors.
SIDECAR_EXTENSIONS = (".txt", ".md", ".json", ".csv", ".xml", ".db", ".ini", ".yaml", ".yml")


def is_supported(path: Path) -> bool:
    """True when a reader is registered for this file's extension."""
    suffix = path.suffix.lower()
    return suffix in READERS or suffix in AFM_EXTENSIONS


def input_files(paths: Sequence[Path], expected: str) -> list[Path]:
    """The files a user named: files as given, folders as their supported files, sorted."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.is_file() and is_supported(p)))
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(str(path), expected, "nothing there")
    if not files:
        raise DataError(", ".join(map(str, paths)), "supported image files", "none")
    return files


def match_channels(
    image: np.ndarray, channels: int, where: str = "image", axis: int = 0
) -> np.ndarray:
    """Grey shown to an RGB model is repeated; colour shown to a grey model is averaged.

    (What a user does when a micrograph of another instrument meets the model.) Other channel
    counts cannot be matched and are an error. ``axis``: the channel axis (1 for a batch).
    """
    c = image.shape[axis]
    if c == channels:
        return image
    if c == 1:
        return np.repeat(image, channels, axis=axis)
    if channels == 1:
        return image.mean(axis=axis, keepdims=True)
    raise DataError(where, f"images with 1 or {channels} channels", f"{c} channels")


def read_array(path: Path) -> np.ndarray:
    """Read any supported file as stored: dtype and values untouched."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READERS:
        known = ", ".join(sorted(READERS))
        raise DataError(str(path), f"one of {known}", f"'{suffix or 'no extension'}'", "convert it")
    _check_file(path)
    return READERS[suffix](path)


def open_stack(path: Path) -> np.ndarray:
    """A TIFF stack (an XCT volume, a mosaic) memory-mapped where its layout allows (plain,
    contiguous), so it never has to fit in memory; otherwise decoded whole, after the declared
    size is checked against :func:`max_pixels`."""
    _check_file(path)
    try:
        return tifffile.memmap(path, mode="r")
    except (ValueError, OSError, tifffile.TiffFileError):
        pass  # compressed or tiled: decode
    return _read_tiff(path)


def probe_shape(path: Path) -> tuple[int, ...]:
    """The stored array shape without decoding pixels where the format allows it."""
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        _check_file(path)
        try:
            with tifffile.TiffFile(path, is_shaped=False) as tif:
                series = tif.series[0]
                return tuple(int(s) for s in series.shape)
        except (tifffile.TiffFileError, OSError, ValueError, IndexError) as exc:
            raise DataError(
                str(path), "a TIFF file", f"a damaged file ({exc})", "re-export"
            ) from None
    if suffix in (".png", ".jpg", ".jpeg", ".bmp"):
        _check_file(path)
        try:
            with _open_pil(path) as im:
                bands = len(im.getbands())
                w, h = im.size
                return (h, w) if bands == 1 or im.mode == "P" else (h, w, bands)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(str(path), "a readable image", f"({exc})", "is it truncated?") from None
    return read_array(path).shape


def to_channels_first(array: np.ndarray, where: str, stack: bool = False) -> np.ndarray:
    """(H, W), (H, W, C) or, for stacks, (C, H, W) -> (C, H, W); RGBA loses its alpha.

    Alpha in a micrograph is an export artefact (constant), never signal, so it is dropped.
    """
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3:
        if stack:
            return array
        if array.shape[-1] in (3, 4):
            return np.moveaxis(array[..., :3], -1, 0)
        if array.shape[-1] == 2:  # grey + alpha
            return array[None, ..., 0]
        if array.shape[0] <= 16:  # channels-first already (multi-page TIFF, .npy stacks)
            return array
    raise DataError(
        where,
        "a 2D image, (H, W, 3|4) colour or (C, H, W) stack",
        f"an array of shape {array.shape}",
        "set reader.kind to 'volume' for 3D data",
    )


def check_finite(array: np.ndarray, where: str) -> None:
    """NaN or inf in a float image would poison every statistic downstream: refuse them."""
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise DataError(where, "finite pixel values", f"{bad} NaN/inf pixels", "fill or mask them")


@dataclass(frozen=True)
class Normalisation:
    """How raw pixels become model input: ``(x - offset) / scale`` per channel, clipped to
    [0, 1] for the stretching policies. Per pixel once the image's statistics are known, so a
    large image can stay in its own dtype and be normalised tile by tile."""

    offset: np.ndarray  # (C, 1, 1) float32
    scale: np.ndarray  # (C, 1, 1) float32
    clip: bool

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """(..., C, H, W) raw pixels -> float32 model input."""
        out = (raw.astype(np.float32, copy=False) - self.offset) / self.scale
        return np.clip(out, 0.0, 1.0) if self.clip else out


def normalisation(image: np.ndarray, policy: str) -> Normalisation:
    """The named policy's per-channel offset and scale for a raw (C, H, W) image.

    - ``dtype``: integers divided by their type's maximum (8- and 16-bit images share a scale).
    - ``minmax`` / ``percentile``: each channel stretched to [0, 1] (percentile: 0.5-99.5%).
    - ``zscore``: each channel to zero mean, unit variance (AFM height / phase / amplitude).
    - ``auto``: ``dtype`` for integer images, ``zscore`` for float images (physical units).

    ``dtype`` and ``minmax`` read the image as it is; ``zscore`` and ``percentile`` compute on a
    float32 copy, as the normalised image would be.
    """
    c = image.shape[0]

    def per_channel(values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float32).reshape(c, 1, 1)

    if policy == "auto":
        policy = "zscore" if np.issubdtype(image.dtype, np.floating) else "dtype"
    if policy == "dtype":
        if np.issubdtype(image.dtype, np.integer):
            top = np.float32(np.iinfo(image.dtype).max)
            return Normalisation(per_channel(np.zeros(c)), per_channel(np.full(c, top)), False)
        if image.dtype == np.bool_:
            return Normalisation(per_channel(np.zeros(c)), per_channel(np.ones(c)), False)
        policy = "minmax"
    if policy == "minmax":  # the cast to float32 keeps the order: min and max are the same
        flat = image.reshape(c, -1)
        lo, hi = per_channel(flat.min(axis=1)), per_channel(flat.max(axis=1))
    else:
        flat = image.astype(np.float32, copy=False).reshape(c, -1)
        if policy == "zscore":
            std = per_channel(flat.std(axis=1))
            return Normalisation(
                per_channel(flat.mean(axis=1)), np.maximum(std, np.float32(1e-8)), False
            )
        lo_hi = np.percentile(flat, [0.5, 99.5], axis=1)
        lo, hi = per_channel(lo_hi[0]), per_channel(lo_hi[1])
    return Normalisation(lo, np.maximum(hi - lo, np.float32(1e-8)), True)


def normalise(image: np.ndarray, policy: str) -> np.ndarray:
    """Raw (C, H, W) image -> float32, per channel, by the named policy (``normalisation``)."""
    return normalisation(image, policy).apply(image)


def detect_info_band(image: np.ndarray, max_fraction: float = 0.25) -> int:
    """Rows of an SEM data bar at the bottom (flat background with text), 0 when there is none.

    Written here because no library detects it: the bar is a run of bottom rows whose median is
    pinned at the extreme grey levels (black or white band) while the micrograph above is not.
    Detection walks up from the bottom while rows stay in the band, and is reported per image.
    """
    grey = image.astype(np.float32)
    if grey.ndim == 3:
        grey = grey.mean(axis=0)
    top = float(grey.max()) or 1.0
    rows = np.median(grey / top, axis=1)
    h = grey.shape[0]
    limit = int(h * max_fraction)
    band = 0
    for value in rows[::-1][:limit]:
        if value <= 0.02 or value >= 0.98:
            band += 1
        else:
            break
    # A band must be a real bar (several rows) and the image above must not be flat too.
    if band < 8 or np.all((rows[: h - band] <= 0.02) | (rows[: h - band] >= 0.98)):
        return 0
    return band
