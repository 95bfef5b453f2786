"""Bad input: every broken file or spec gives one clear line (file, expected, found, hint).

Never a traceback, never a silent skip, and ``inspect_dataset`` lists every problem at once.
Each case builds a tiny dataset in ``tmp_path`` (see ``DataMaker`` in conftest.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import tifffile

from matseg.datasets.check import DatasetReport, ProblemOut, inspect_dataset, report
from matseg.datasets.readers import check_finite, read_array
from matseg.datasets.spec import load_spec, spec_from_dict
from matseg.errors import DataError, MatsegError, SpecError

if TYPE_CHECKING:
    from conftest import DataMaker

INDEX = {"type": "index"}


def _check(spec: Any) -> DatasetReport:
    return report(inspect_dataset(spec))


def _problem(rep: DatasetReport, name: str, level: str = "error") -> ProblemOut:
    """The one problem of ``level`` that names file ``name`` (in its location or message)."""
    hits = [p for p in rep.problems if p.level == level and (name in p.where or name in p.message)]
    listing = "\n".join(f"{p.level}: {p.where}: {p.message}" for p in rep.problems)
    assert hits, f"no {level} naming {name!r} among:\n{listing}"
    for p in hits:
        assert "\n" not in p.where + p.message, f"multi-line problem: {p}"
    return hits[0]


def _one_line_error(exc: MatsegError, path: Path | str) -> str:
    text = str(exc)
    assert str(path) in text
    assert "\n" not in text
    assert "expected" in text and "found" in text
    return text


# --- direct reader calls ------------------------------------------------------------------------


def _png_cut_mid(dm: DataMaker) -> bytes:
    data = dm.encoded(dm.noise((64, 64)), ".png")
    return data[: len(data) // 2]  # IDAT cut in half


def _png_header_only(dm: DataMaker) -> bytes:
    return dm.encoded(dm.noise((64, 64)), ".png")[:8]  # signature, no chunks


def _tiff_cut_mid(dm: DataMaker) -> bytes:
    data = dm.encoded(dm.noise((64, 64)), ".tif")
    return data[: len(data) // 2]  # pixel strip cut in half


def _tiff_cut_in_ifd(dm: DataMaker) -> bytes:
    return dm.encoded(dm.noise((64, 64)), ".tif")[:20]


BROKEN = {
    "png_cut_mid.png": _png_cut_mid,
    "png_header_only.png": _png_header_only,
    "tiff_cut_mid.tif": _tiff_cut_mid,
    "tiff_cut_in_ifd.tif": _tiff_cut_in_ifd,
    "zero_byte.png": lambda dm: b"",
    "zero_byte.tif": lambda dm: b"",
    "not_really.png": lambda dm: b"this is text, not a PNG",
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_reader_raises_one_line_data_error_naming_the_file(
    data_maker: DataMaker, name: str
) -> None:
    path = data_maker.images / name
    path.write_bytes(BROKEN[name](data_maker))
    with pytest.raises(DataError) as info:
        read_array(path)
    _one_line_error(info.value, path)
    assert info.value.where == str(path)
    assert info.value.hint  # every reader error says what to do


def test_zero_byte_file_says_so(data_maker: DataMaker) -> None:
    path = data_maker.images / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="zero-byte"):
        read_array(path)


@pytest.mark.parametrize("name", ["movie.gif", "data.xyz", "noext"])
def test_reader_refuses_unsupported_format(data_maker: DataMaker, name: str) -> None:
    path = data_maker.images / name
    path.write_bytes(b"GIF89a....")
    with pytest.raises(DataError) as info:
        read_array(path)
    text = _one_line_error(info.value, path)
    assert ".png" in text and ".tif" in text  # says what would have been accepted


def test_reader_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "gone.png"
    with pytest.raises(DataError, match="no such file") as info:
        read_array(path)
    _one_line_error(info.value, path)


def test_reader_tiff_header_only_is_an_error(data_maker: DataMaker) -> None:
    path = data_maker.images / "header_only.tif"
    path.write_bytes(data_maker.encoded(data_maker.noise(), ".tif")[:8])
    with pytest.raises(DataError) as info:
        read_array(path)
    _one_line_error(info.value, path)


def test_reader_truncated_compressed_tiff_is_a_data_error(data_maker: DataMaker) -> None:
    data = data_maker.encoded(data_maker.noise((64, 64)), ".tif", compression="zlib")
    path = data_maker.images / "zlib_cut.tif"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as info:
        read_array(path)
    _one_line_error(info.value, path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_finite_names_the_image(bad: float) -> None:
    image = np.zeros((1, 8, 8), dtype=np.float32)
    image[0, 2, 3] = bad
    with pytest.raises(DataError, match="1 NaN/inf") as info:
        check_finite(image, "scan_7.tif")
    _one_line_error(info.value, "scan_7.tif")


# --- one bad file in an otherwise good dataset --------------------------------------------------


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_damaged_image_reported_with_its_name(data_maker: DataMaker, name: str) -> None:
    data_maker.good()
    (data_maker.images / name).write_bytes(BROKEN[name](data_maker))
    data_maker.mask(Path(name).stem + ".png")
    rep = _check(data_maker.spec(encoding=INDEX))
    _problem(rep, name)
    assert not rep.usable
    assert rep.n_items == 4  # the good pairs were still read


@pytest.mark.parametrize("name", ["cut.tif", "cut.png", "empty.png"])
def test_damaged_mask_reported_with_its_name(data_maker: DataMaker, name: str) -> None:
    data_maker.good()
    stem, ext = Path(name).stem, Path(name).suffix
    data_maker.image(stem + ".png")
    data = b"" if stem == "empty" else data_maker.encoded(data_maker.two_class_mask(), ext)
    (data_maker.masks / name).write_bytes(data[: len(data) // 2])
    rep = _check(data_maker.spec(encoding=INDEX))
    _problem(rep, f"masks/{name}")
    assert not rep.usable


def test_size_mismatch_names_mask_and_both_sizes(data_maker: DataMaker) -> None:
    data_maker.good()
    data_maker.image("small.png", data_maker.noise((20, 24)))
    data_maker.mask("small.png")  # 32x32
    rep = _check(data_maker.spec(encoding=INDEX))
    p = _problem(rep, "small.png")
    assert "(20, 24)" in p.message and "(32, 32)" in p.message
    assert not rep.usable


def test_mask_values_outside_declared_classes(data_maker: DataMaker) -> None:
    data_maker.good()
    data_maker.image("odd.png")
    mask = data_maker.two_class_mask()
    mask[0, :3] = 5
    data_maker.mask("odd.png", mask)
    rep = _check(data_maker.spec(encoding=INDEX))
    p = _problem(rep, "masks/odd.png")
    assert "5" in p.message and "0..1" in p.message
    assert not rep.usable


def test_mask_values_missing_from_the_value_table(data_maker: DataMaker) -> None:
    for i in range(3):
        data_maker.image(f"m{i}.png")
        data_maker.mask(f"m{i}.png", data_maker.two_class_mask() * 255)
    mask = data_maker.two_class_mask() * 255
    mask[5, 5] = 128  # an anti-aliased pixel the table does not map
    data_maker.image("soft.png")
    data_maker.mask("soft.png", mask)
    rep = _check(data_maker.spec(encoding={"type": "index", "values": {"0": 0, "255": 1}}))
    assert "128" in _problem(rep, "masks/soft.png").message
    assert not rep.usable


def test_unpaired_image_and_mask_are_warnings_naming_them(data_maker: DataMaker) -> None:
    data_maker.good()
    data_maker.image("lonely.png")
    data_maker.mask("orphan.png")
    rep = _check(data_maker.spec(encoding=INDEX))
    assert "lonely.*" in _problem(rep, "images/lonely.png", "warning").message  # what was sought
    _problem(rep, "masks/orphan.png", "warning")
    assert [Path(p).name for p in rep.unpaired_images] == ["lonely.png"]
    assert [Path(p).name for p in rep.unpaired_masks] == ["orphan.png"]
    assert rep.n_pairs == 4
    assert rep.usable  # a leftover is worth knowing, not a reason to refuse the dataset


def test_mask_suffix_pairing_reports_the_stem_it_looked_for(data_maker: DataMaker) -> None:
    data_maker.image("a.png")
    data_maker.mask("a_mask.png")
    data_maker.image("b.png")
    data_maker.mask("b.png")  # wrong name for this pairing rule
    rep = _check(data_maker.spec(encoding=INDEX, pairing={"mask_suffix": "_mask"}))
    assert "b_mask" in _problem(rep, "images/b.png", "warning").message
    _problem(rep, "masks/b.png", "warning")
    assert rep.n_pairs == 1


@pytest.mark.parametrize("folder", ["images", "masks"])
def test_duplicate_stems_are_errors(data_maker: DataMaker, folder: str) -> None:
    data_maker.good()
    data_maker.pair("a")
    other = data_maker.images if folder == "images" else data_maker.masks
    array = data_maker.noise() if folder == "images" else data_maker.two_class_mask()
    tifffile.imwrite(other / "a.tif", array)
    rep = _check(data_maker.spec(encoding=INDEX))
    p = _problem(rep, f"{folder}/a.tif")
    assert "a.png" in p.message and "duplicate" in p.message
    assert not rep.usable


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_float_tiff_image(data_maker: DataMaker, bad: float) -> None:
    data_maker.good()
    image = np.random.default_rng(1).random((32, 32)).astype(np.float32)
    image[4, 4] = bad
    image[5, 5] = bad
    data_maker.image("float.tif", image)
    data_maker.mask("float.png")
    rep = _check(data_maker.spec(encoding=INDEX))
    assert "2 NaN/inf" in _problem(rep, "images/float.tif").message
    assert not rep.usable


def test_nan_in_float_mask_is_an_error(data_maker: DataMaker) -> None:
    data_maker.good()
    mask = data_maker.two_class_mask().astype(np.float32)
    mask[3, 3] = np.nan
    data_maker.image("nanmask.png")
    data_maker.mask("nanmask.tif", mask)
    rep = _check(data_maker.spec(encoding={"type": "threshold", "threshold": 0.5}))
    _problem(rep, "masks/nanmask.tif")


@pytest.mark.parametrize("name", ["anim.gif", "notes.xyz", "README"])
def test_unsupported_file_in_images_is_an_error(data_maker: DataMaker, name: str) -> None:
    data_maker.good()
    (data_maker.images / name).write_bytes(b"GIF89a\x01\x00")
    rep = _check(data_maker.spec(encoding=INDEX))
    p = _problem(rep, f"images/{name}")
    assert "unsupported format" in p.message
    assert not rep.usable


def test_sidecar_documentation_is_only_a_note(data_maker: DataMaker) -> None:
    data_maker.good()
    (data_maker.images / "acquisition.txt").write_text("15 kV")
    rep = _check(data_maker.spec(encoding=INDEX))
    _problem(rep, "acquisition.txt", "note")
    assert rep.usable


@pytest.mark.parametrize("content", ["nothing", "masks_only", "sidecars_only"])
def test_empty_dataset_is_an_error(data_maker: DataMaker, content: str) -> None:
    if content == "masks_only":
        data_maker.mask("a.png")
    if content == "sidecars_only":
        (data_maker.images / "readme.txt").write_text("no images yet")
    rep = _check(data_maker.spec(encoding=INDEX))
    assert rep.n_pairs == 0 and rep.n_items == 0
    assert any(p.level == "error" and "no usable" in p.message for p in rep.problems)
    assert not rep.usable


def test_empty_dataset_error_names_the_folder_searched(data_maker: DataMaker) -> None:
    rep = _check(data_maker.spec(encoding=INDEX))
    error = next(p for p in rep.problems if p.level == "error")
    assert str(data_maker.images) in error.where + error.message


def test_missing_root_folder_is_a_spec_error(tmp_path: Path) -> None:
    spec = spec_from_dict({"name": "lost", "root": "no_such_dir"}, base_dir=tmp_path)
    with pytest.raises(SpecError) as info:
        inspect_dataset(spec)
    text = _one_line_error(info.value, tmp_path / "no_such_dir")
    assert "root" in text


def test_missing_images_folder_is_a_spec_error(data_maker: DataMaker) -> None:
    spec = data_maker.spec(images="scans")
    with pytest.raises(SpecError) as info:
        inspect_dataset(spec)
    _one_line_error(info.value, data_maker.root / "scans")


# --- the spec itself ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field_path"),
    [
        ({"classes": 3}, "classes"),
        ({"split": {"ratios": [0.5, 0.5]}}, "split.ratios"),
        ({"split": {"ratios": [0.5, 0.5, 0.5]}}, "split.ratios"),
        ({"colour_map": {"1": "red"}}, "colour_map"),
        ({"split": {"method": "manifest"}}, "split"),
        ({"split": {"method": "kfold"}}, "split.method"),
        ({"encoding": {"type": "threshold", "threshold": "high"}}, "encoding.threshold"),
        ({"encoding": {"type": "rle"}}, "encoding"),
        ({"tiling": {"patch_size": 64, "overlap": 64}}, "tiling"),
        ({"modality": "MRI"}, "modality"),
        ({"pixel_size_um": -1}, "pixel_size_um"),
        ({"name": None}, "name"),
    ],
)
def test_spec_field_errors_name_the_field(fields: dict[str, Any], field_path: str) -> None:
    with pytest.raises(SpecError) as info:
        spec_from_dict({"name": "x", **fields}, where="my.json")
    text = str(info.value)
    assert f"field '{field_path}" in text
    assert text.startswith("my.json")
    assert "\n" not in text
    assert info.value.hint


def test_spec_field_error_from_file_names_file_and_field(data_maker: DataMaker) -> None:
    path = data_maker.spec_file(classes=3)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    text = _one_line_error(info.value, path)
    assert "'classes'" in text and "3" in text


@pytest.mark.parametrize(
    "content", ['{"name": "x",', "", "\xff\xfe not utf-8", '{"name": "x"} trailing']
)
def test_invalid_json_spec(tmp_path: Path, content: str) -> None:
    path = tmp_path / "broken.json"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(SpecError, match="valid JSON") as info:
        load_spec(path)
    _one_line_error(info.value, path)


def test_spec_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text(json.dumps([{"name": "x"}]))
    with pytest.raises(SpecError, match="JSON object") as info:
        load_spec(path)
    _one_line_error(info.value, path)


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file") as info:
        load_spec(tmp_path / "nope.json")
    _one_line_error(info.value, tmp_path / "nope.json")


# --- everything at once -------------------------------------------------------------------------


def test_every_problem_is_listed_at_once(data_maker: DataMaker) -> None:
    dm = data_maker
    dm.good()
    png = dm.encoded(dm.noise(), ".png")
    tif = dm.encoded(dm.noise(), ".tif")
    for stem, data, ext in [
        ("trunc_png", png[: len(png) // 2], ".png"),
        ("trunc_tif", tif[: len(tif) // 2], ".tif"),
        ("zero", b"", ".png"),
    ]:
        (dm.images / f"{stem}{ext}").write_bytes(data)
        dm.mask(f"{stem}.png")
    dm.image("size.png", dm.noise((16, 16)))
    dm.mask("size.png")
    bad_values = dm.two_class_mask()
    bad_values[0, 0] = 9
    dm.image("values.png")
    dm.mask("values.png", bad_values)
    dm.image("lonely.png")
    dm.mask("orphan.png")
    dm.pair("dup")
    tifffile.imwrite(dm.images / "dup.tif", dm.noise())
    nan_image = np.ones((32, 32), dtype=np.float32)
    nan_image[1, 1] = np.nan
    dm.image("nan.tif", nan_image)
    dm.mask("nan.png")
    (dm.images / "movie.gif").write_bytes(b"GIF89a")
    (dm.images / "blob.xyz").write_bytes(b"?")

    rep = _check(dm.spec(encoding=INDEX))

    for name in [
        "images/trunc_png.png",
        "images/trunc_tif.tif",
        "images/zero.png",
        "masks/size.png",
        "masks/values.png",
        "images/dup.tif",
        "images/nan.tif",
        "images/movie.gif",
        "images/blob.xyz",
    ]:
        _problem(rep, name, "error")
    _problem(rep, "images/lonely.png", "warning")
    _problem(rep, "masks/orphan.png", "warning")
    assert not rep.usable
    # The good pairs (and dup.png, paired with its mask) were still read and summarised.
    assert rep.n_items == 5
    assert all("\n" not in p.message for p in rep.problems)


def test_damaged_mask_with_inferred_encoding_is_listed_not_raised(data_maker: DataMaker) -> None:
    data_maker.good()
    data_maker.image("broken.png")
    (data_maker.masks / "broken.png").write_bytes(b"")
    data_maker.image("lonely.png")
    rep = _check(data_maker.spec(encoding=None))
    _problem(rep, "masks/broken.png")
    _problem(rep, "images/lonely.png", "warning")
    assert rep.encoding_source == "inferred"


def test_truncated_compressed_tiff_is_listed_not_raised(data_maker: DataMaker) -> None:
    data_maker.good()
    data = data_maker.encoded(data_maker.noise((64, 64)), ".tif", compression="zlib")
    (data_maker.images / "zlib.tif").write_bytes(data[: len(data) // 2])
    data_maker.mask("zlib.png", data_maker.two_class_mask((64, 64)))
    rep = _check(data_maker.spec(encoding=INDEX))
    _problem(rep, "images/zlib.tif")


# --- the single-class trap ----------------------------------------------------------------------


def _three_class_masks(dm: DataMaker, n: int = 4) -> None:
    for i in range(n):
        mask = np.zeros((32, 32), dtype=np.uint8)
        mask[8:16] = 1
        mask[20 + i :] = 2
        dm.image(f"s{i}.png")
        dm.mask(f"s{i}.png", mask)


def test_index_masks_read_with_threshold_127_are_a_single_class_error(
    data_maker: DataMaker,
) -> None:
    _three_class_masks(data_maker)
    spec = data_maker.spec(classes=None, encoding={"type": "threshold", "threshold": 127})
    rep = _check(spec)
    errors = [p for p in rep.problems if p.level == "error"]
    assert any("single class" in p.message for p in errors), rep.problems
    assert rep.single_class_masks == 4
    assert not rep.usable


def test_index_masks_without_encoding_are_inferred_as_three_classes(
    data_maker: DataMaker,
) -> None:
    _three_class_masks(data_maker)
    rep = _check(data_maker.spec(classes=None))
    assert rep.usable
    assert rep.encoding_source == "inferred"
    assert rep.encoding is not None and rep.encoding["type"] == "index"
    assert "[0, 1, 2]" in rep.encoding_reason
    assert len(rep.classes) == 3 and len(rep.classes_present) == 3
    assert rep.single_class_masks == 0
    assert any(p.level == "note" and "inferred" in p.message for p in rep.problems)
