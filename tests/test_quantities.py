"""Microstructure quantities against known answers: generated structures, drawn shapes,
stereology, invariances and units."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from skimage.draw import disk, ellipse

from matseg import quantities as q
from matseg.datasets.synthetic import generate, generate_volume
from matseg.errors import SpecError


def _discs(shape: tuple[int, int], centres: list[tuple[int, int]], radius: float) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.int64)
    for c in centres:
        mask[disk(c, radius, shape=shape)] = 1
    return mask


def test_area_fraction_is_the_generators_porosity_in_2d_and_3d() -> None:
    _, mask = generate("pores", 128, seed=3, porosity=0.3)
    assert q.area_fraction(mask, 1).value == pytest.approx(0.3, abs=1 / mask.size)
    _, volume = generate_volume("pores", 24, seed=1, porosity=0.25)
    assert q.area_fraction(volume, 1).value == pytest.approx(0.25, abs=1 / volume.size)
    ignored = mask.copy()
    ignored[:64] = 255  # ignored pixels are not counted
    expected = (mask[64:] == 1).mean()
    assert q.area_fraction(ignored, 1, ignore_index=255).value == pytest.approx(expected)


def test_discs_of_known_radius_give_their_count_diameters_and_aspect_ratio() -> None:
    centres = [(20, 20), (20, 70), (70, 20), (70, 70), (45, 45)]
    mask = _discs((100, 100), centres, 8)
    f = q.features(mask, 1, border="exclude")
    assert f.count == 5 and f.cut_by_border == 0
    assert np.allclose(f.ecd, 16, rtol=0.03)  # equivalent circular diameter = 2 r
    # the digital disc is 15 pixels across its rows and columns, more between its corners
    assert np.allclose(f.feret_min, 15) and np.all((f.feret_max > 15) & (f.feret_max < 17.5))
    assert np.all(f.aspect_ratio > 0.85)
    corrected = q.features(mask, 1)  # Miles-Lantuejoul: each weighed by 100^2 / (100 - 15)^2
    assert np.allclose(corrected.weights, 100**2 / (100 - 15) ** 2)
    from skimage.measure import label, regionprops  # the ECD is scikit-image's

    reference = sorted(r.equivalent_diameter_area for r in regionprops(label(mask)))
    assert sorted(f.ecd) == pytest.approx(reference)
    oval = np.zeros((80, 80), dtype=np.int64)
    oval[ellipse(40, 40, 6, 18, shape=oval.shape)] = 1  # semi-axes 6 and 18: aspect 1/3
    (ratio,) = q.features(oval, 1).aspect_ratio
    assert ratio == pytest.approx(1 / 3, abs=0.04)
    assert q.measure("feature_count", mask, 1).value == pytest.approx(5 * 100**2 / 85**2)
    density = q.measure("number_density", mask, 1, q.Scale(0.5))
    assert density.value == pytest.approx(5 / 85**2 / 0.25) and density.unit == "µm⁻²"


def test_miles_lantuejoul_removes_the_border_bias_that_exclusion_leaves() -> None:
    rng = np.random.default_rng(0)
    canvas = np.zeros((1200, 1200), dtype=np.int64)
    small, large = 4, 14
    placed = []
    for _ in range(4000):  # non-overlapping discs of two sizes
        c = rng.uniform(0, 1200, size=2)
        r = small if rng.random() < 0.5 else large
        if all(np.hypot(*(c - p)) > r + pr + 2 for p, pr in placed):
            placed.append((c, r))
            canvas[disk(tuple(c), r, shape=canvas.shape)] = 1
    n_large = sum(r == large for _, r in placed)
    truth = n_large / placed.__len__()  # share of large discs in the plane
    corrected, excluded = [], []
    for y in range(0, 1200, 150):
        for x in range(0, 1200, 150):
            window = canvas[y : y + 150, x : x + 150]
            for rule, out in (("miles-lantuejoul", corrected), ("exclude", excluded)):
                f = q.features(window, 1, border=rule)
                big = f.ecd > 2 * (small + large) / 2
                out.append((f.weights[big].sum(), f.weights.sum()))
    share = {
        name: sum(a for a, _ in v) / sum(b for _, b in v)
        for name, v in (("ml", corrected), ("ex", excluded))
    }
    assert share["ml"] == pytest.approx(truth, abs=0.02)  # unbiased
    assert share["ex"] < truth - 0.04  # large features are cut more often: biased low
    density = sum(b for _, b in corrected) / (64 * 150 * 150)
    assert density == pytest.approx(len(placed) / 1200**2, rel=0.05)


def test_grain_size_of_voronoi_grains_matches_stereology_and_astm_e112() -> None:
    # a window inside a larger tessellation, so that the border cuts grains as in a micrograph
    full, n = 700, 490
    _, tessellation = generate("grains", full, seed=2, n_grains=n)
    size = 400
    mask = tessellation[150 : 150 + size, 150 : 150 + size]
    density = n / full**2  # grains per pixel
    assert len(np.unique(q.grains(tessellation, 1))) - 1 == pytest.approx(n, rel=0.02)
    scale = q.Scale(0.5)  # µm per pixel: a 200 x 200 µm window
    counted = q.jeffries_count(q.grains(mask, 1))
    assert counted == pytest.approx(density * size**2, rel=0.1)
    planimetric = q.grain_size_planimetric(mask, 1, scale).value
    per_mm2 = density / (0.5 / 1000) ** 2
    assert planimetric == pytest.approx(3.321928 * math.log10(per_mm2) - 2.954, abs=0.15)
    # Poisson-Voronoi: boundary length per area 2 sqrt(lambda), so P_L = 4 sqrt(lambda) / pi;
    # on 1-pixel boundaries of ~30 px grains the digital intercept runs 2-8% long (slivers at
    # triple points are skipped), so the tolerance is 10%
    intercept = q.mean_lineal_intercept(mask, 1, scale, spacing=4).value
    expected = math.pi / (4 * math.sqrt(density)) * 0.5  # µm
    assert intercept == pytest.approx(expected, rel=0.1)
    g = q.grain_size(mask, 1, scale, spacing=4).value
    assert g == pytest.approx(-6.643856 * math.log10(expected / 1000) - 3.288, abs=0.3)
    unknown = q.grain_size(mask, 1)
    assert math.isnan(unknown.value) and "pixel size" in unknown.note


def test_rotating_mirroring_and_rescaling() -> None:
    _, mask = generate("particles", 160, seed=4, coverage=0.25)
    scale = q.Scale(0.2)
    names = ("area_fraction", "feature_count", "feature_size", "feret_max", "feret_min")
    base = {name: q.measure(name, mask, 1, scale).value for name in names}
    for turned in (np.rot90(mask), np.fliplr(mask), np.flipud(mask)):
        for name in names:
            assert q.measure(name, turned, 1, scale).value == pytest.approx(base[name], rel=1e-6)
    double = q.Scale(0.4)
    assert q.measure("feature_size", mask, 1, double).value == pytest.approx(
        2 * base["feature_size"]
    )
    density = q.measure("number_density", mask, 1, scale).value
    assert q.measure("number_density", mask, 1, double).value == pytest.approx(density / 4)
    _, grains = generate("grains", 256, seed=5, n_grains=90)
    g = q.grain_size(grains, 1, scale).value
    for turned in (np.rot90(grains), np.fliplr(grains)):
        assert q.grain_size(turned, 1, scale).value == pytest.approx(g, abs=0.1)
    # doubling the pixel size doubles the intercept: G falls by 6.643856 log10(2) = 2.0
    assert q.grain_size(grains, 1, double).value == pytest.approx(g - 2.0, abs=1e-6)


def test_no_feature_gives_count_zero_and_undefined_sizes_with_a_note() -> None:
    empty = np.zeros((64, 64), dtype=np.int64)
    assert q.measure("feature_count", empty, 1).value == 0
    size = q.measure("feature_size", empty, 1, q.Scale(1.0))
    assert math.isnan(size.value) and q.NO_FEATURES in size.note and size.unit == "µm"
    assert "pixel size unknown" in q.measure("feature_size", empty, 1).note
    with pytest.raises(SpecError, match="quantity"):
        q.measure("porosty", empty, 1)
    with pytest.raises(SpecError, match="connectivity"):
        q.features(empty, 1, connectivity=6)
    with pytest.raises(SpecError, match="pixel_size_um"):
        q.Scale(float("inf"))
    volume = np.zeros((10, 10, 10), dtype=np.int64)
    volume[3:6, 3:6, 3:6] = 1
    f = q.features(volume, 1, border="exclude")
    assert f.count == 1 and f.connectivity == 26
    assert f.ecd[0] == pytest.approx((6 * 27 / math.pi) ** (1 / 3))  # equivalent sphere
    assert f.feret_max[0] == pytest.approx(math.sqrt(27))  # corner to corner of the 3^3 cube
    volume[:] = 0
    volume[3, 2:6, 2:6] = 1  # a one-voxel-thin plate (scikit-image's marching cubes fails)
    assert q.features(volume, 1).feret_max[0] == pytest.approx(math.sqrt(1 + 16 + 16))


def test_a_target_names_a_quantity_and_a_class() -> None:
    classes = ["grain", "grain_boundary"]
    assert q.Target.parse("grain_size", classes).class_id == 1  # the boundary class by default
    assert q.Target.parse("area_fraction:grain", classes).name == "area_fraction:grain"
    with pytest.raises(SpecError, match=r"task\.target"):
        q.Target.parse("porosity:pore", classes)
    with pytest.raises(SpecError, match="a class of the dataset"):
        q.Target.parse("area_fraction:pore", classes)


def test_merged_particles_show_in_the_count_and_the_size_distribution() -> None:
    truth = _discs((200, 200), [(100, 85), (100, 115)], 10)
    merged = truth.copy()
    merged[96:104, 85:115] = 1  # a bridge: the two touching particles become one
    same = q.compare(truth, truth, q.Target("feature_size", 1, "particle"), q.Scale())
    assert same.error == 0 and same.ks == 0 and same.wasserstein == 0
    assert (q.features(truth, 1, border="exclude").count,
            q.features(merged, 1, border="exclude").count) == (2, 1)  # fmt: skip
    count = q.compare(truth, merged, q.Target("feature_count", 1, "particle"), q.Scale())
    assert count.predicted < count.truth and count.relative_error < -0.3  # border-weighted
    size = q.compare(truth, merged, q.Target("feature_size", 1, "particle"), q.Scale(2.0))
    assert size.predicted > size.truth and size.ks == 1.0  # no feature of one size in both
    assert size.wasserstein == pytest.approx(size.predicted - size.truth)
    targets = [q.Target(name, 1, "particle") for name in q.QUANTITIES if "grain" not in name
               and name != "mean_lineal_intercept"]  # fmt: skip
    many = q.compare_many(truth, merged, targets, q.Scale(2.0))  # features measured once
    one_by_one = [q.compare(truth, merged, t, q.Scale(2.0)) for t in targets]
    assert [(e.truth, e.predicted, e.unit) for e in many] == [
        (e.truth, e.predicted, e.unit) for e in one_by_one
    ]
    fraction = q.compare(truth, merged, q.Target("area_fraction", 1, "particle"), q.Scale())
    assert fraction.error == pytest.approx((merged == 1).mean() - (truth == 1).mean())
    errors = [q.QuantityError(1.0, 1.0 + e) for e in (0.1, 0.3, -0.1, 0.2, math.nan)]
    s = q.summarise_errors(errors)
    assert s.n_images == 4 and s.bias == pytest.approx(0.125)
    assert s.bias_ci[0] <= s.bias <= s.bias_ci[1]
    assert s.mean_absolute_error == pytest.approx(0.175)


def test_quantify_a_dataset_and_a_mask_folder_from_the_command_line(tmp_path: Path) -> None:
    import csv
    import json
    import shutil

    from PIL import Image
    from typer.testing import CliRunner

    from matseg.cli import app
    from matseg.datasets.synthetic import write_synthetic_dataset
    from matseg.quantify import quantify

    spec = write_synthetic_dataset(tmp_path / "data", kind="particles", n_images=4, size=64)
    table = quantify(spec, pixel_size_um=0.5)
    masks = sorted((tmp_path / "data" / "masks").iterdir())
    assert len({r.image for r in table.rows}) == len(masks)
    first = np.asarray(Image.open(masks[0]))
    row = next(r for r in table.rows if r.image == masks[0].stem and r.quantity == "area_fraction"
               and r.class_name == table.classes[1])  # fmt: skip
    assert row.value == pytest.approx((first == 1).mean())
    sizes = [r for r in table.rows if r.quantity == "feature_size"]
    assert sizes and all(r.unit == "µm" for r in sizes)
    alone = tmp_path / "manual"  # a scientist's masks with no images beside them
    shutil.copytree(tmp_path / "data" / "masks", alone)
    again = quantify(alone, pixel_size_um=0.5)
    assert [(r.image, r.quantity, r.value) for r in again.rows] == [
        (r.image, r.quantity, r.value) for r in table.rows
    ]
    assert any("inferred" in n for n in again.notes)
    runner = CliRunner()
    out_csv = tmp_path / "q.csv"
    got = runner.invoke(app, ["quantify", str(spec), "--pixel-size", "0.5", "--out", str(out_csv)])
    assert got.exit_code == 0, got.output
    assert "feature_size" in got.output and "µm" in got.output
    with out_csv.open() as f:
        assert len(list(csv.DictReader(f))) == len(table.rows)
    got = runner.invoke(app, ["quantify", str(alone), "--json"])
    assert got.exit_code == 0 and json.loads(got.output)[0]["unit"] == "1"
    assert runner.invoke(app, ["quantify", str(spec), "--pixel-size", "-1"]).exit_code != 0
    empty = tmp_path / "empty"
    empty.mkdir()
    got = runner.invoke(app, ["quantify", str(empty)])
    assert got.exit_code != 0 and "mask files" in got.output and "Traceback" not in got.output


def test_an_evaluation_keeps_per_image_quantities_and_pooled_size_distributions() -> None:
    from matseg.job import QuantityRecorder

    truth = _discs((200, 200), [(100, 85), (100, 115), (40, 40)], 10)
    merged = truth.copy()
    merged[96:104, 85:115] = 1  # two particles bridged into one
    merged[0:5, 0:5] = 255  # ignored in the truth: ignored in the prediction too
    truth[0:5, 0:5] = 255
    recorder = QuantityRecorder(["background", "particle"], q.Scale(0.5), 255, True)
    recorder.add(truth, merged)
    recorder.add(truth, truth)
    values = recorder.values()
    fraction = values["area_fraction:particle"]
    assert (
        fraction.predicted[1]
        == fraction.truth[1]
        == pytest.approx((truth == 1).sum() / (truth != 255).sum())
    )
    sizes = values["feature_size:particle"]
    assert sizes.unit == "µm" and sizes.ks[1] == 0 and sizes.ks[0] > 0
    assert len(sizes.truth_distribution) == 6 and len(sizes.predicted_distribution) == 5
    assert (
        not QuantityRecorder(["background", "particle"], q.Scale(), 255)
        .values()["feature_size:particle"]
        .truth_distribution
    )  # out-of-fold and validation splits keep no distributions


def test_quantify_stacks_the_slices_of_a_volume_and_measures_it_in_3d(tmp_path: Path) -> None:
    import json

    import tifffile

    from matseg.datasets.synthetic import write_synthetic_dataset
    from matseg.quantify import quantify

    write_synthetic_dataset(tmp_path, kind="pores", n_images=1, size=32, n_volumes=2,
                            volume_size=24)  # fmt: skip
    spec = {"name": "vols", "images": "volumes", "masks": "volume_labels",
            "encoding": {"type": "index"}, "classes": ["solid", "pore"],
            "reader": {"kind": "volume"}}  # fmt: skip
    (tmp_path / "vols.json").write_text(json.dumps(spec))
    table = quantify(tmp_path / "vols.json", pixel_size_um=2.0)
    assert {r.image for r in table.rows} == {"vol0", "vol1"}
    labels = tifffile.imread(tmp_path / "volume_labels" / "vol0.tif")
    fraction = next(r for r in table.rows if r.image == "vol0" and r.class_name == "pore"
                    and r.quantity == "area_fraction")  # fmt: skip
    assert fraction.value == pytest.approx((labels == 1).mean())  # over the whole stack
    density = next(r for r in table.rows if r.quantity == "number_density")
    assert density.unit == "µm⁻³" and "26-connected" in density.note
