"""AFM instrument files: real .gwy / .ibw / .jpk files are written in tmp_path and read back.

.gwy files are written with ``gwyfile``; .ibw (Igor binary wave v5, as Asylum saves) and .jpk
(JPK TIFF tags) are packed by hand below, since igor2 cannot write and no JPK writer exists.
Bruker .spm has no writer here, so it is covered only by the checks that precede parsing.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from matseg.datasets.afm import AFM_EXTENSIONS, AfmImage, read_afm
from matseg.errors import DataError

RNG = np.random.default_rng(7)
HEIGHT_M = RNG.normal(scale=2e-9, size=(6, 8))  # metres, as Gwyddion stores heights
PHASE_DEG = RNG.normal(scale=30.0, size=(6, 8))
XREAL_M, YREAL_M = 8e-6, 6e-6  # 8 columns over 8 um -> 1000 nm pixels


def _needs(module: str) -> Any:
    return pytest.importorskip(module, reason=f"{module} is part of the matseg[afm] extra")


def write_gwy(path: Path, fields: dict[str, tuple[np.ndarray, str]], **extra: Any) -> Path:
    """A Gwyddion file with one data field per (title -> (data, z unit)), lateral unit metres."""
    gwyfile = _needs("gwyfile")
    from gwyfile.objects import GwyContainer, GwyDataField

    container = GwyContainer()
    for i, (title, (data, z_unit)) in enumerate(fields.items()):
        container[f"/{i}/data/title"] = title
        container[f"/{i}/data"] = GwyDataField(
            np.asarray(data, dtype=np.float64),
            xreal=XREAL_M,
            yreal=YREAL_M,
            si_unit_xy="m",
            si_unit_z=z_unit,
        )
    container.update(extra)
    container.tofile(str(path))
    assert gwyfile.load(str(path))  # the writer's own reader accepts it
    return path


@pytest.fixture
def gwy(tmp_path: Path) -> Path:
    _needs("AFMReader")  # the matseg[afm] extra as a whole
    return write_gwy(
        tmp_path / "scan.gwy", {"Height": (HEIGHT_M, "m"), "Phase": (PHASE_DEG, "deg")}
    )


# Igor binary wave v5 (WaveMetrics TN003): 64-byte BinHeader5 + 320-byte WaveHeader5 + data
# (column-major) + note + dimension labels (32 bytes each, the first names the whole dimension).
_BIN_HEADER5 = "<hhiiii4i4iiii"
_WAVE_HEADER5 = "<IIIihh6sh32siI4i4d4d4s16shhddI4I4II16ihhhbbIihhII"


def write_ibw(path: Path, stack: np.ndarray, labels: list[str], note: bytes) -> Path:
    """An Asylum-style .ibw: ``stack`` of shape (nx, ny, channels), channel labels on dim 2."""
    data = np.asarray(stack, dtype="<f4")
    payload = data.tobytes(order="F")
    label_bytes = b"".join(name.encode().ljust(32, b"\0") for name in ["", *labels])
    n_dim = [*data.shape, 0]
    wave_header = struct.pack(
        _WAVE_HEADER5,
        *(0, 0, 0, data.size, 2, 0, b"", 1, b"scan", 0, 0),  # type 2 = float32
        *n_dim,
        *([1.0] * 4),
        *([0.0] * 4),
        *(b"", b"", 0, 0, 0.0, 0.0, 0),
        *([0] * 8),
        0,
        *([0] * 16),
        *([0] * 11),
    )
    assert struct.calcsize(_WAVE_HEADER5) == len(wave_header) == 320
    bin_header = struct.pack(
        _BIN_HEADER5, 5, 0, 320 + len(payload), 0, len(note), 0,
        *(0, 0, 0, 0), *(0, 0, len(label_bytes), 0), 0, 0, 0,
    )  # fmt: skip
    path.write_bytes(bin_header + wave_header + payload + note + label_bytes)
    return path


# Asylum notes are CR-separated "Key:value" lines; AFMReader reads Slow/FastScanSize (metres).
IBW_NOTE = b"ScanRate:1\rSlowScanSize:8e-06\rFastScanSize:8e-06\rImagingMode:AC Mode"


@pytest.fixture
def ibw(tmp_path: Path) -> tuple[Path, np.ndarray]:
    _needs("AFMReader")
    _needs("igor2")
    stack = RNG.normal(scale=1e-9, size=(8, 6, 2)).astype(np.float32)
    return write_ibw(tmp_path / "scan.ibw", stack, ["HeightTrace", "PhaseTrace"], IBW_NOTE), stack


def ibw_expected(stack: np.ndarray, index: int) -> np.ndarray:
    """What AFMReader.load_ibw returns for a channel: transposed, flipped up-down, times 1e9."""
    return np.flipud(stack[:, :, index].T.astype(np.float64)) * 1e9


# JPK TIFF: page 0 holds the scan size, each further page one channel with its scaling slots.
def write_jpk(path: Path, planes: list[tuple[str, bool, np.ndarray, float, float]]) -> Path:
    """Planes are (channel, retrace, raw float32 image, multiplier, offset) on slot 'nominal'."""
    tifffile = _needs("tifffile")
    height, width = planes[0][2].shape
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            np.zeros((4, 4), np.uint8),
            extratags=[
                (32834, "d", 1, XREAL_M, True),
                (32835, "d", 1, YREAL_M, True),
                (32838, "I", 1, width, True),
                (32839, "I", 1, height, True),
            ],
        )
        for name, retrace, image, multiplier, offset in planes:
            tif.write(
                image,
                extratags=[
                    (32848, "s", 0, name, True),
                    (32849, "I", 1, int(retrace), True),
                    (32896, "I", 1, 2, True),  # two slots: raw (0) and nominal (1, default)
                    (32897, "s", 0, "nominal", True),
                    (32912, "s", 0, "raw", True),
                    (32931, "s", 0, "NullScaling", True),
                    (32960, "s", 0, "nominal", True),
                    (32979, "s", 0, "LinearScaling", True),
                    (32980, "d", 1, multiplier, True),
                    (32981, "d", 1, offset, True),
                ],
            )
    return path


# --- .gwy ----------------------------------------------------------------------------------


def test_gwy_reads_all_channels_with_values_names_and_pixel_size(gwy: Path) -> None:
    image = read_afm(gwy)
    assert isinstance(image, AfmImage)
    assert image.channels == ["Height", "Phase"]
    assert image.data.dtype == np.float32
    assert image.data.shape == (2, 6, 8)  # non-square: (C, yres, xres)
    np.testing.assert_allclose(image.data[0], HEIGHT_M * 1e9, rtol=1e-6)  # metres -> nm
    np.testing.assert_allclose(image.data[1], PHASE_DEG, rtol=1e-6)  # degrees kept as stored
    assert image.pixel_size_nm == pytest.approx(XREAL_M / 8 * 1e9)  # xreal / xres, in nm


def test_gwy_channels_selected_by_name_in_the_order_asked(gwy: Path) -> None:
    image = read_afm(gwy, ["Phase", "Height"])
    assert image.channels == ["Phase", "Height"]
    np.testing.assert_allclose(image.data[0], PHASE_DEG, rtol=1e-6)
    np.testing.assert_allclose(image.data[1], HEIGHT_M * 1e9, rtol=1e-6)
    only = read_afm(gwy, ["Phase"])
    assert only.data.shape == (1, 6, 8)
    assert only.channels == ["Phase"]


def test_gwy_unknown_channel_lists_the_file_channels(gwy: Path) -> None:
    with pytest.raises(DataError) as info:
        read_afm(gwy, ["Height", "Amplitude"])
    message = str(info.value)
    assert "'Amplitude'" in message and "'Height'" in message and "'Phase'" in message
    assert "\n" not in message
    with pytest.raises(DataError, match="did you mean 'Height'"):
        read_afm(gwy, ["height"])


def test_gwy_with_boolean_component_reads(tmp_path: Path) -> None:
    """Gwyddion writes ``/0/data/visible`` (a boolean); AFMReader 0.0.7's parser hangs on it."""
    path = write_gwy(
        tmp_path / "saved.gwy", {"Height": (HEIGHT_M, "m")}, **{"/0/data/visible": True}
    )
    image = read_afm(path)
    assert image.channels == ["Height"]
    np.testing.assert_allclose(image.data[0], HEIGHT_M * 1e9, rtol=1e-6)


def test_gwy_nan_is_a_data_error_naming_the_channel(tmp_path: Path) -> None:
    phase = PHASE_DEG.copy()
    phase[2, 3] = np.nan
    path = write_gwy(tmp_path / "nan.gwy", {"Height": (HEIGHT_M, "m"), "Phase": (phase, "deg")})
    with pytest.raises(DataError, match=r"1 NaN/Inf pixel\(s\) in channel 'Phase'"):
        read_afm(path)
    assert read_afm(path, ["Height"]).data.shape == (1, 6, 8)  # the clean channel still reads


def test_gwy_channels_of_different_shapes_must_be_selected(tmp_path: Path) -> None:
    path = write_gwy(
        tmp_path / "mixed.gwy", {"Height": (HEIGHT_M, "m"), "Small": (np.zeros((3, 3)), "m")}
    )
    with pytest.raises(DataError, match="channels of one shape"):
        read_afm(path)
    assert read_afm(path, ["Small"]).data.shape == (1, 3, 3)


def test_gwy_that_is_not_gwyddion_is_a_data_error(tmp_path: Path) -> None:
    _needs("gwyfile")
    path = tmp_path / "fake.gwy"
    path.write_bytes(b"not a gwyddion file")
    with pytest.raises(DataError, match="GWYP"):
        read_afm(path)
    truncated = tmp_path / "truncated.gwy"
    good = write_gwy(tmp_path / "good.gwy", {"Height": (HEIGHT_M, "m")})
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DataError, match="readable Gwyddion"):
        read_afm(truncated)


# --- .ibw (through AFMReader.load_ibw) ----------------------------------------------------


def test_ibw_reads_labelled_channels_through_afmreader(ibw: tuple[Path, np.ndarray]) -> None:
    path, stack = ibw
    image = read_afm(path)
    assert image.channels == ["HeightTrace", "PhaseTrace"]
    assert image.data.shape == (2, 6, 8)
    for index in range(2):
        np.testing.assert_allclose(image.data[index], ibw_expected(stack, index), rtol=1e-5)
    assert image.pixel_size_nm == pytest.approx(1000.0)  # SlowScanSize 8 um over 8 pixels

    selected = read_afm(path, ["PhaseTrace"])
    assert selected.channels == ["PhaseTrace"]
    np.testing.assert_allclose(selected.data[0], ibw_expected(stack, 1), rtol=1e-5)


def test_ibw_unknown_channel_lists_labels(ibw: tuple[Path, np.ndarray]) -> None:
    with pytest.raises(DataError, match="'HeightTrace', 'PhaseTrace'"):
        read_afm(ibw[0], ["Height"])


def test_ibw_garbage_is_a_data_error(tmp_path: Path) -> None:
    _needs("AFMReader")
    path = tmp_path / "garbage.ibw"
    path.write_bytes(b"\x05\x00" + b"\xff" * 100)
    with pytest.raises(DataError, match=r"readable Asylum/Igor \.ibw"):
        read_afm(path)


# --- .jpk (through AFMReader.load_jpk) ----------------------------------------------------


def test_jpk_reads_trace_and_retrace_channels_through_afmreader(tmp_path: Path) -> None:
    _needs("AFMReader")
    raw_height = RNG.normal(size=(6, 8)).astype(np.float32)
    raw_deflection = RNG.normal(size=(6, 8)).astype(np.float32)
    path = write_jpk(
        tmp_path / "scan.jpk",
        [("height", False, raw_height, 1e-9, 0.0), ("vDeflection", True, raw_deflection, 2.0, 0.5)],
    )
    image = read_afm(path)
    assert image.channels == ["height_trace", "vDeflection_retrace"]
    assert image.data.shape == (2, 6, 8)
    # AFMReader: raw * multiplier + offset, flipped up-down; heights converted m -> nm.
    np.testing.assert_allclose(image.data[0], np.flipud(raw_height), rtol=1e-5)
    np.testing.assert_allclose(image.data[1], np.flipud(raw_deflection * 2.0 + 0.5), rtol=1e-5)
    assert image.pixel_size_nm == pytest.approx(1000.0)
    with pytest.raises(DataError, match="'height_trace', 'vDeflection_retrace'"):
        read_afm(path, ["height"])


# --- checks before any parser runs --------------------------------------------------------


def test_extensions_are_the_registry() -> None:
    assert AFM_EXTENSIONS == (".spm", ".jpk", ".ibw", ".gwy")


@pytest.mark.parametrize("ext", AFM_EXTENSIONS)
def test_zero_byte_file_is_a_data_error(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"empty{ext}"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="zero-byte"):
        read_afm(path)


def test_missing_file_and_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_afm(tmp_path / "absent.gwy")
    other = tmp_path / "scan.nid"
    other.write_bytes(b"x")
    with pytest.raises(DataError, match=r"an AFM file \(.spm, .jpk, .ibw, .gwy\)"):
        read_afm(other)


@pytest.mark.parametrize(("ext", "module"), [(".ibw", "AFMReader"), (".gwy", "gwyfile")])
def test_missing_parser_package_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ext: str, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    path = tmp_path / f"scan{ext}"
    path.write_bytes(b"some bytes")
    with pytest.raises(DataError) as info:
        read_afm(path)
    message = str(info.value)
    assert module in message and "not installed" in message
    assert message.endswith('pip install "matseg[afm]"')


def test_importing_the_module_does_not_import_the_parsers() -> None:
    code = (
        "import sys, matseg.datasets.afm; "
        "loaded = {'AFMReader', 'gwyfile', 'igor2', 'pySPM'} & set(sys.modules); "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_spm_without_bruker_header_is_a_data_error_not_a_hang(tmp_path: Path) -> None:
    """pySPM loops forever on a file lacking the header's end line; it must never be reached."""
    _needs("AFMReader")
    path = tmp_path / "other_vendor.spm"
    path.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(DataError, match="File list end"):
        read_afm(path)


def test_jpk_that_is_not_a_tiff_is_a_data_error(tmp_path: Path) -> None:
    _needs("AFMReader")
    path = tmp_path / "garbage.jpk"
    path.write_bytes(b"JPK?" * 64)
    with pytest.raises(DataError, match=r"readable JPK \.jpk"):
        read_afm(path)


def test_afm_dataset_through_the_pipeline(tmp_path: Path) -> None:
    """A folder of .gwy scans with masks reads as a 2-channel dataset, channels chosen by name."""
    from PIL import Image

    from matseg.datasets.check import inspect_dataset, report
    from matseg.datasets.spec import spec_from_dict

    _needs("AFMReader")
    rng = np.random.default_rng(0)
    (tmp_path / "scans").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(3):
        height = rng.normal(0, 5e-9, (16, 24))
        write_gwy(
            tmp_path / "scans" / f"grain {i}.gwy",
            {"Height": (height, "m"), "Phase": (rng.normal(0, 3, (16, 24)), "deg")},
        )
        Image.fromarray((height > 0).astype(np.uint8)).save(tmp_path / "masks" / f"grain {i}.png")
    spec = spec_from_dict(
        {
            "name": "afm",
            "images": "scans",
            "modality": "AFM",
            "encoding": {"type": "index"},
            "classes": ["low", "high"],
            "reader": {"kind": "afm", "channels": ["Phase", "Height"]},
        },
        base_dir=tmp_path,
    )
    ins = inspect_dataset(spec)
    rep = report(ins)
    assert rep.usable and rep.n_pairs == 3 and rep.channels == {"2": 3}
    sample = ins.dataset()[0]
    assert sample.image.shape == (2, 16, 24)
    np.testing.assert_allclose(sample.image.reshape(2, -1).std(axis=1), 1, atol=1e-4)
