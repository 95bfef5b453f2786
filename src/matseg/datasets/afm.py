"""AFM instrument files (.spm, .jpk, .ibw, .gwy) -> one float32 (C, H, W) stack, channels by name.

Why a separate module: AFM files hold several channels (Height, Phase, Amplitude...) with a
physical pixel size, which a plain image reader cannot see. The parsers are an optional extra
(``pip install "matseg[afm]"``) and are imported inside the functions, never at module import,
so matseg works without them and only reading an AFM file asks for them.

Which parser reads which format (``_FORMATS`` is the one place to add a format):

- ``.spm`` (Bruker Nanoscope), ``.jpk`` (JPK), ``.ibw`` (Asylum / Igor): AFMReader's
  ``load_spm`` / ``load_jpk`` / ``load_ibw``, one channel per call. Channel names are listed the
  way AFMReader names them (pySPM layers, ``<name>_trace`` / ``<name>_retrace`` for JPK, igor2
  wave labels such as ``HeightTrace`` for IBW). Values are what AFMReader returns: heights in nm;
  note that for ``.ibw`` AFMReader multiplies *every* channel by 1e9 (metres -> nm), phase too.
- ``.gwy`` (Gwyddion): the ``gwyfile`` package, not AFMReader. AFMReader 0.0.7's Gwyddion parser
  never returns on files holding a boolean component (Gwyddion writes ``/0/data/visible``),
  transposes non-square fields and multiplies every channel by 1e9 whatever its unit. Here a
  channel whose value unit is a length (``m``) is converted to nm; any other unit (``deg``,
  ``V``...) is kept as stored.

``pixel_size_nm`` is the fast-axis (x) pixel size of the first selected channel, in nm; ``None``
when the file gives no length unit. Non-finite values (NaN/Inf, e.g. an aborted scan) raise a
``DataError`` rather than being filled silently: the fix (crop or fill the lines) is the user's
call.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from matseg.errors import DataError

INSTALL_HINT = 'pip install "matseg[afm]"'

# Length units -> nanometres per unit (Gwyddion stores base SI units, "m", but allow prefixes).
_NM_PER_UNIT = {"m": 1e9, "mm": 1e6, "um": 1e3, "µm": 1e3, "nm": 1.0, "pm": 1e-3}

# The line that closes a Bruker Nanoscope header.
_SPM_HEADER_END = b"\\*File list end"

# JPK TIFF tags (JPKImageSpec; the same codes as AFMReader's default_config.yaml).
_JPK_CHANNEL_NAME_TAG = 32848
_JPK_TRACE_RETRACE_TAG = 32849


@dataclass(frozen=True)
class AfmImage:
    """The channels of one AFM scan, stacked.

    Attributes:
        data: float32 array of shape (C, H, W), one plane per entry of ``channels``.
        channels: channel names as the file (or AFMReader) calls them, in the order of ``data``.
        pixel_size_nm: physical size of one pixel along x in nm, or ``None`` when unknown.
    """

    data: np.ndarray
    channels: list[str]
    pixel_size_nm: float | None


class _OpenedFile(NamedTuple):
    """A parsed file: the channel names it holds and how to load one as (image, px_nm)."""

    names: list[str]
    load: Callable[[str], tuple[np.ndarray, float | None]]


@dataclass(frozen=True)
class _Format:
    """One AFM file format: what it is called, which packages read it, how to open it."""

    description: str
    modules: tuple[str, ...]
    open: Callable[[Path], _OpenedFile]


@contextmanager
def _quiet_afmreader() -> Iterator[None]:
    """Silence AFMReader's loguru messages (it logs every load to stderr) during one read."""
    from loguru import logger  # AFMReader's own dependency, present whenever AFMReader is

    logger.disable("AFMReader")
    try:
        yield
    finally:
        logger.enable("AFMReader")  # the state AFMReader sets for itself at import


def _afmreader_loader(
    load_one: Callable[[Path, str], tuple[np.ndarray, float]], path: Path
) -> Callable[[str], tuple[np.ndarray, float | None]]:
    """Wrap an AFMReader ``load_<fmt>(file_path, channel)`` so its log output stays quiet."""

    def load(name: str) -> tuple[np.ndarray, float | None]:
        with _quiet_afmreader():
            image, px_nm = load_one(path, name)
        return np.asarray(image), float(px_nm)

    return load


def _has_bytes(path: Path, marker: bytes, chunk: int = 1 << 20) -> bool:
    """Whether ``marker`` occurs in the file, read in chunks (headers can be large)."""
    tail = b""
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            if marker in tail + block:
                return True
            tail = block[-(len(marker) - 1) :]
    return False


def _open_spm(path: Path) -> _OpenedFile:
    """Bruker .spm: channel names from pySPM's layer headers, pixels via AFMReader.load_spm."""
    import pySPM
    from AFMReader import spm

    # pySPM reads header lines until "\*File list end" and loops forever when it is absent.
    if not _has_bytes(path, _SPM_HEADER_END):
        raise DataError(
            str(path),
            "a Bruker Nanoscope .spm file (text header ending in '\\*File list end')",
            "no such header line",
            "is it from another vendor or truncated? export it from NanoScope Analysis",
        )
    with _quiet_afmreader():
        scan = pySPM.Bruker(path)
    names = [
        layer[b"@2:Image Data"][0].decode("latin1").split('"')[1]
        for layer in scan.layers
        if b"@2:Image Data" in layer
    ]
    return _OpenedFile(names, _afmreader_loader(spm.load_spm, path))


def _open_jpk(path: Path) -> _OpenedFile:
    """JPK .jpk (TIFF): names ``<channel>_trace``/``_retrace`` as AFMReader.load_jpk expects."""
    import tifffile
    from AFMReader import jpk

    with tifffile.TiffFile(path) as tif:
        names = []
        for page in tif.pages[1:]:  # page 0 is the thumbnail
            direction = "trace" if page.tags[_JPK_TRACE_RETRACE_TAG].value == 0 else "retrace"
            names.append(f"{page.tags[_JPK_CHANNEL_NAME_TAG].value}_{direction}")
    return _OpenedFile(names, _afmreader_loader(jpk.load_jpk, path))


def _open_ibw(path: Path) -> _OpenedFile:
    """Asylum .ibw: channel names are the igor2 wave labels, pixels via AFMReader.load_ibw."""
    from AFMReader import ibw
    from igor2 import binarywave

    wave = binarywave.load(str(path))["wave"]
    # The same label walk as AFMReader.load_ibw, so a listed name is one it accepts.
    names = [label.decode() for labels in wave["labels"] for label in labels if label]
    return _OpenedFile(names, _afmreader_loader(ibw.load_ibw, path))


def _unit(si_unit: Any) -> str:
    """The unit string of a gwyfile GwySIUnit (or ``""`` when the component is absent)."""
    return str(si_unit.get("unitstr", "")) if si_unit is not None else ""


def _open_gwy(path: Path) -> _OpenedFile:
    """Gwyddion .gwy through gwyfile: every ``/<n>/data`` field, named by ``/<n>/data/title``."""
    import gwyfile

    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GWYP":
        raise DataError(
            str(path),
            "a Gwyddion file starting with b'GWYP'",
            f"the bytes {magic!r}",
            "is it a Gwyddion .gwy file? re-save it from Gwyddion",
        )
    container = gwyfile.load(str(path))
    ids = sorted(int(m.group(1)) for key in container if (m := re.fullmatch(r"/(\d+)/data", key)))
    fields: dict[str, Any] = {}
    for i in ids:
        field = container[f"/{i}/data"]
        if not isinstance(field, gwyfile.objects.GwyDataField):
            continue
        title = str(container.get(f"/{i}/data/title", f"/{i}/data"))
        fields[title if title not in fields else f"{title} #{i}"] = field  # keep duplicates

    def load(name: str) -> tuple[np.ndarray, float | None]:
        field = fields[name]
        image = np.asarray(field.data, dtype=np.float64)  # gwyfile reshapes to (yres, xres)
        z_scale = _NM_PER_UNIT.get(_unit(field.get("si_unit_z")))
        if z_scale is not None:
            image = image * z_scale
        xy_scale = _NM_PER_UNIT.get(_unit(field.get("si_unit_xy")))
        xreal = field.get("xreal")
        px_nm = None if xy_scale is None or not xreal else xreal * xy_scale / image.shape[1]
        return image, px_nm

    return _OpenedFile(list(fields), load)


# The one place to add a format: extension -> description, packages needed, opener.
_FORMATS: dict[str, _Format] = {
    ".spm": _Format("Bruker Nanoscope .spm", ("AFMReader", "pySPM"), _open_spm),
    ".jpk": _Format("JPK .jpk", ("AFMReader", "tifffile"), _open_jpk),
    ".ibw": _Format("Asylum/Igor .ibw", ("AFMReader", "igor2"), _open_ibw),
    ".gwy": _Format("Gwyddion .gwy", ("gwyfile",), _open_gwy),
}

AFM_EXTENSIONS: tuple[str, ...] = tuple(_FORMATS)  # (".spm", ".jpk", ".ibw", ".gwy")


def _format_for(path: Path) -> _Format:
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        raise DataError(
            str(path),
            f"an AFM file ({', '.join(AFM_EXTENSIONS)})",
            f"the extension {suffix or '(none)'!r}",
            "read other images with matseg.datasets.readers.read_array",
        )
    return _FORMATS[suffix]


def _check_file(path: Path, fmt: _Format) -> None:
    if not path.is_file():
        raise DataError(str(path), f"a {fmt.description} file", "no such file", "check the path")
    if path.stat().st_size == 0:
        raise DataError(
            str(path), f"a {fmt.description} file", "a zero-byte file", "re-export or remove it"
        )


def _require(path: Path, fmt: _Format) -> None:
    """Import the packages a format needs; a missing one is a DataError with the install hint."""
    for module in fmt.modules:
        try:
            importlib.import_module(module)
        except ImportError:
            raise DataError(
                str(path),
                f"the optional package {module} to read {fmt.description} files",
                "it is not installed",
                INSTALL_HINT,
            ) from None


def _unreadable(path: Path, fmt: _Format, exc: Exception) -> DataError:
    """A parser failure as one line: the exception's type and its message, whitespace folded."""
    message = " ".join(str(exc).split())
    if len(message) > 200:
        message = message[:197] + "..."
    return DataError(
        str(path),
        f"a readable {fmt.description} file",
        f"{type(exc).__name__}: {message}" if message else type(exc).__name__,
        "check that it opens in Gwyddion or the instrument software; re-export it if not",
    )


def _select(path: Path, names: list[str], channels: list[str] | None) -> list[str]:
    """The channels to read: the requested ones (checked against the file), else all of them."""
    listed = ", ".join(repr(n) for n in names) or "none"
    if not names:
        raise DataError(
            str(path), "at least one named image channel", "none", "is it an image scan?"
        )
    if channels is None:
        return list(names)
    requested = [channels] if isinstance(channels, str) else list(channels)
    if not requested:
        raise DataError(
            str(path), "at least one channel name", "an empty list", f"the file has {listed}"
        )
    for name in requested:
        if name not in names:
            close = [n for n in names if n.lower() == str(name).lower()]
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise DataError(
                str(path),
                f"a channel among {listed}",
                f"{name!r}",
                f"{hint}pass names exactly as listed (case-sensitive) in channels=[...]",
            )
    duplicated = sorted({n for n in requested if requested.count(n) > 1})
    if duplicated:
        raise DataError(
            str(path),
            "each channel named once",
            f"{', '.join(map(repr, duplicated))} more than once",
            "remove the repeats",
        )
    return requested


def read_afm(path: Path, channels: list[str] | None = None) -> AfmImage:
    """Read the named channels of an AFM instrument file as one float32 (C, H, W) stack.

    Args:
        path: a ``.spm``, ``.jpk``, ``.ibw`` or ``.gwy`` file (extension decides the parser).
        channels: channel names in the order wanted (e.g. ``["Height", "Phase"]``); ``None``
            reads every image channel the file lists, in file order.

    Raises:
        DataError: unknown extension, missing or empty file, parser package not installed (hint
            ``pip install "matseg[afm]"``), unparseable file, unknown channel (the message lists
            the file's channels), channels of different shapes, or NaN/Inf values.
    """
    path = Path(path)
    fmt = _format_for(path)
    _check_file(path, fmt)
    _require(path, fmt)
    # Third-party parsers fail with anything from struct.error to KeyError on a damaged file;
    # each is turned into one DataError naming the file.
    try:
        opened = fmt.open(path)
    except DataError:
        raise
    except Exception as exc:
        raise _unreadable(path, fmt, exc) from exc
    selected = _select(path, opened.names, channels)

    planes: list[np.ndarray] = []
    pixel_size_nm: float | None = None
    for name in selected:
        try:
            image, px_nm = opened.load(name)
        except Exception as exc:
            raise _unreadable(path, fmt, exc) from exc
        if image.ndim != 2:
            raise DataError(
                str(path),
                f"a 2-D image in channel {name!r}",
                f"an array of shape {image.shape}",
                "select 2-D image channels with channels=[...]",
            )
        if planes and image.shape != planes[0].shape:
            raise DataError(
                str(path),
                f"channels of one shape (channel {selected[0]!r} is {planes[0].shape})",
                f"channel {name!r} of shape {image.shape}",
                "select channels of one size with channels=[...]",
            )
        plane = image.astype(np.float32)  # values beyond float32's range become Inf: caught next
        bad = int(plane.size - np.count_nonzero(np.isfinite(plane)))
        if bad:
            raise DataError(
                str(path),
                "finite values in every selected channel",
                f"{bad} NaN/Inf pixel(s) in channel {name!r}",
                "crop or fill the missing scan lines (e.g. in Gwyddion) and save again",
            )
        if not planes and px_nm is not None and math.isfinite(px_nm) and px_nm > 0:
            pixel_size_nm = float(px_nm)
        planes.append(plane)
    return AfmImage(np.stack(planes), list(selected), pixel_size_nm)
