"""The hostile-input battery (issue 17): each case here once ended in a traceback, a silent
wrong answer or a file outside its folder; now each ends in one line naming the file or field,
what was expected and what was found."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from matseg.cli import app
from matseg.datasets.readers import read_array
from matseg.datasets.spec import spec_from_dict
from matseg.errors import DataError, SpecError, UserError
from matseg.profile import load_profile, profile_problems

if TYPE_CHECKING:
    from conftest import DataMaker

PROFILE = {"name": "p", "datasets": ["examples/nasa-super.json"]}


def _one_line(exc: UserError) -> str:
    line = exc.line()
    assert "\n" not in line and "Input should be" not in line, line
    return line


def _tiny_profile(
    root: Path, name: str, decoders: tuple[str, ...] = ("unet",), **training: Any
) -> Path:
    """A profile of resnet18 (random weights) on 12 generated particle micrographs, holdout."""
    from matseg.datasets.synthetic import write_synthetic_dataset

    if not (root / "data").exists():
        write_synthetic_dataset(root / "data", kind="particles", n_images=12, size=64, seed=0)
    path = root / "profile.json"
    path.write_text(json.dumps({
        "name": name, "datasets": ["data/dataset.json"],
        "model": {"encoders": ["resnet18"], "decoders": list(decoders), "weights": "none"},
        "training": {"batch_size": 4, "patch_size": 64, **training},
        "evaluation": {"protocol": "holdout"},
    }))  # fmt: skip
    return path


# --- numbers that JSON's parser accepts and training cannot use ------------------------------


@pytest.mark.parametrize(
    ("block", "field", "value"),
    [
        ("training", "max_minutes", float("inf")),
        ("training", "learning_rate", float("inf")),
        ("training", "learning_rate", float("nan")),
        ("evaluation", "tie_margin", float("-inf")),
        ("training", "batch_size", True),
        ("training", "max_epochs", False),
        ("qc", "accept", True),
    ],
)
def test_profile_refuses_non_finite_and_boolean_numbers(
    tmp_path: Path, block: str, field: str, value: Any
) -> None:
    data = PROFILE | {block: {field: value}}
    (problem,) = profile_problems(data)
    assert problem.startswith(f"{block}.{field}: expected a "), problem
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))  # Python writes Infinity / NaN, and reads them back
    with pytest.raises(SpecError) as caught:
        load_profile(path)
    assert f"{block}.{field}" in _one_line(caught.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("pixel_size_um", float("inf")), ("pixel_size_um", float("nan")), ("ignore_index", True)],
)
def test_spec_refuses_non_finite_and_boolean_numbers(field: str, value: Any) -> None:
    with pytest.raises(SpecError) as caught:
        spec_from_dict({"name": "d", field: value})
    line = _one_line(caught.value)
    assert f"field '{field}'" in line and "expected a " in line


def test_validation_errors_carry_no_pydantic_wording() -> None:
    with pytest.raises(SpecError) as caught:
        spec_from_dict({"name": "d", "encodng": {}})
    assert "no such field (check its spelling)" in _one_line(caught.value)
    with pytest.raises(SpecError) as caught:
        spec_from_dict({"name": "d", "encoding": {"type": "nope"}})
    assert "expected 'type' one of 'index', 'colour'" in _one_line(caught.value)


# --- user text that would become a path ------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../../../escaped", "/tmp/absolute", "a/b", "..", ".hidden", "-rf", "a\\b", ""]
)
def test_dataset_name_is_never_a_path(name: str) -> None:
    with pytest.raises(SpecError) as caught:
        spec_from_dict({"name": name})
    assert "field 'name'" in _one_line(caught.value)


@pytest.mark.parametrize("name", ["../up", "/abs", ".hidden"])
def test_profile_name_is_never_a_path(name: str) -> None:
    (problem,) = profile_problems(PROFILE | {"name": name})
    assert problem.startswith("name: ")


# --- decompression bombs: a few kB declaring 10^10 pixels ------------------------------------


def _png_declaring(path: Path, width: int, height: int) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b""))
    return path


def _tiff_declaring(path: Path, width: int, height: int) -> Path:
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8))
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(width)
        tif.pages[0].tags["ImageLength"].overwrite(height)
    return path


BOMBS = {"bomb.png": _png_declaring, "bomb.tif": _tiff_declaring}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path, name: str) -> None:
    path = BOMBS[name](tmp_path / name, 100_000, 100_000)
    assert path.stat().st_size < 10_000
    with pytest.raises(DataError) as caught:
        read_array(path)
    line = _one_line(caught.value)
    assert line.startswith(str(path)) and "100000 x 100000" in line
    assert "2,147,483,648" in line and "MATSEG_MAX_PIXELS" in line


def test_the_pixel_limit_is_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ok.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(path)
    assert read_array(path).shape == (64, 64)
    monkeypatch.setenv("MATSEG_MAX_PIXELS", "1000")
    with pytest.raises(DataError, match="at most 1,000 pixels"):
        read_array(path)
    monkeypatch.setenv("MATSEG_MAX_PIXELS", "lots")
    with pytest.raises(DataError, match="MATSEG_MAX_PIXELS: expected a whole number"):
        read_array(path)


@pytest.mark.parametrize("folder", ["images", "masks"])
def test_dataset_check_names_a_bomb_in_one_line(data_maker: DataMaker, folder: str) -> None:
    data_maker.good(4)
    _png_declaring(getattr(data_maker, folder) / "good0.png", 100_000, 100_000)
    spec = data_maker.spec_file(encoding={"type": "index"})
    result = CliRunner().invoke(app, ["datasets", "check", str(spec)], env={"COLUMNS": "250"})
    assert "Traceback" not in result.output and not isinstance(result.exception, MemoryError)
    assert "good0.png" in result.output and "100000 x 100000" in result.output


def test_truncated_decode_cache_file_is_a_cache_miss(data_maker: DataMaker, tmp_path: Path) -> None:
    from matseg.datasets.check import inspect_dataset

    data_maker.good(4)
    spec = data_maker.spec(encoding={"type": "index"})
    cache = tmp_path / "cache"
    first = inspect_dataset(spec, cache_dir=cache).dataset(cache)
    expected = [first[i] for i in range(len(first))]
    cached = sorted(cache.rglob("*.image.npy"))
    assert cached
    for path in cached:  # cut every cached image short
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    again = inspect_dataset(spec, cache_dir=cache).dataset(cache)
    for i, sample in enumerate(expected):
        np.testing.assert_array_equal(again[i].image, sample.image)
        np.testing.assert_array_equal(again[i].mask, sample.mask)


# --- quality control on a dataset as small as the demo's -------------------------------------


def test_a_detector_that_cannot_be_fitted_on_little_data_is_skipped_with_a_note() -> None:
    from matseg.qc.quality import TypicalityQC

    rng = np.random.default_rng(0)
    train = {"encoder": rng.normal(size=(12, 40)), "classical": rng.normal(size=(12, 24))}
    val = {"encoder": rng.normal(size=(6, 40)), "classical": rng.normal(size=(6, 24))}
    qc = TypicalityQC(["encoder", "classical"], detector="mahalanobis",
                      compare=["forte-kde", "knn"], k=3)  # fmt: skip
    qc.fit_embeddings(train, val)
    assert set(qc.detectors_) == {"mahalanobis", "knn"}
    (reason,) = qc.skipped_.values()
    assert "forte-kde" in qc.skipped_ and "12 training patches" in reason
    assert set(qc.thresholds_) == {"mahalanobis", "knn"}
    chosen = TypicalityQC(["encoder", "classical"], detector="forte-kde", compare=[], k=3)
    with pytest.raises(UserError, match="detector forte-kde cannot be fitted on 12 training"):
        chosen.fit_embeddings(train, val)


# --- command-line options and operating-system faults ----------------------------------------


def _cli(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    return result


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["predict", "x.png", "--out", "o", "--batch-size", "0"], "--batch-size"),
        (["predict", "x.png", "--out", "o", "--precision", "fp8"], "--precision"),
        (["predict", "x.png", "--out", "o", "--overlap", "1.5"], "--overlap"),
        (["explain", "--image", "x.png", "--precision", "fp8"], "--precision"),
        (["explain", "--image", "x.png", "--window", "0"], "--window"),
        (["explain", "--image", "x.png", "--kernel", "laser"], "--kernel"),
        (["explain", "--image", "x.png", "--compile", "maybe"], "--compile"),
        (["recommend", "p.json", "--top", "0"], "--top"),
        (["run", "p.json", "--workers", "0"], "--workers"),
        (["demo", "--folds", "1"], "--folds"),
        (["demo", "--kind", "foam"], "--kind"),
    ],
)
def test_every_option_is_validated_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], option: str
) -> None:
    monkeypatch.chdir(tmp_path)  # were an option let through, nothing lands in the checkout
    needs_run = args[0] in ("predict", "explain")
    result = _cli(*args, *(["--run", str(tmp_path)] if needs_run else []))
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output


def test_demo_kinds_are_the_generators() -> None:
    import typing

    from matseg.cli import demo
    from matseg.datasets.synthetic import STRUCTURES

    kind = typing.get_type_hints(demo, include_extras=True)["kind"]
    assert set(typing.get_args(typing.get_args(kind)[0])) == set(STRUCTURES)


def test_predict_out_that_is_a_file_is_one_line(tiny_run: Path, tmp_path: Path) -> None:
    image = next((tiny_run.parents[1] / "data" / "images").iterdir())
    taken = tmp_path / "taken"
    taken.write_text("a file where the output folder should go")
    result = _cli("predict", str(image), "--run", str(tiny_run), "--out", str(taken))
    assert result.exit_code == 2
    assert str(taken) in result.output and "choose another path" in result.output
    assert taken.read_text().startswith("a file where")  # nothing lost


@pytest.mark.parametrize(
    ("code", "remedy"),
    [
        (errno.ENOSPC, "free space on that disk"),
        (errno.EROFS, "read-only"),
        (errno.EACCES, "change its permissions"),
    ],
)
def test_disk_full_and_read_only_outputs_are_one_line(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, remedy: str
) -> None:
    image = next((tiny_run.parents[1] / "data" / "images").iterdir())

    def refuse(src: Any, dst: Any) -> None:
        raise OSError(code, os.strerror(code), str(dst))

    monkeypatch.setattr("matseg.atomic.os.replace", refuse)
    result = _cli("predict", str(image), "--run", str(tiny_run), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and remedy in result.output
    assert str(tmp_path / "o") in result.output
    assert not list((tmp_path / "o").rglob("*.tmp"))  # no temporary file left behind


# --- damaged run folders: every command, every file ------------------------------------------


@pytest.fixture(scope="module")
def complete_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny run with quality control, its record and report."""
    from matseg.qc.pipeline import run_quality_control
    from matseg.record import write_record
    from matseg.report import build_report

    run = tmp_path_factory.mktemp("complete") / tiny_run.name
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("qc", "explain"))
    run_quality_control(run)
    write_record(run)
    build_report(run)
    return run


def _job(run: Path) -> str:
    return next((run / "jobs").iterdir()).name


DAMAGED = {  # file (relative, {job} filled in) -> how it is damaged
    "profile.json": ["missing", "truncated"],
    "plan.json": ["missing", "truncated"],
    "jobs/{job}/metrics.json": ["missing", "truncated"],
    "jobs/{job}/model.safetensors": ["missing", "truncated"],
    "record.json": ["truncated"],
    "qc/{job}/qc.json": ["missing", "truncated"],
    "qc/{job}/embeddings.npz": ["truncated"],
}
CASES = [(f, how) for f, hows in DAMAGED.items() for how in hows]


def _damaged_copy(run: Path, where: Path, file: str, how: str) -> Path:
    copy = where / run.name
    shutil.copytree(run, copy, copy_function=os.link)  # the model is large: share, never edit
    path = copy / file.format(job=_job(run))
    data = path.read_bytes()
    path.unlink()  # a new file: the original, linked, stays whole
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    return copy


def _commands(run: Path, image: Path, out: Path) -> dict[str, list[str]]:
    return {
        "report": ["report", str(run)],
        "predict": ["predict", str(image), "--run", str(run), "--out", str(out / "p")],
        "qc score": ["qc", "score", str(image), "--run", str(run)],
        "explain": ["explain", "--run", str(run), "--image", str(image), "--roi", "8,8,40,40",
                    "--window", "16", "--stride", "16", "--no-faithful", "--out", str(out / "e")],
        "export": ["export", "--run", str(run), "--out", str(out / "x"), "--no-onnx"],
        "compare": ["compare", str(run), str(run)],
        "qc evaluate": ["qc", "evaluate", "--run", str(run), "--ood", str(image.parent),
                        "--no-shifts"],
        "qc fit": ["qc", "fit", "--run", str(run), "--no-shifts"],
    }  # fmt: skip


@pytest.mark.parametrize(("file", "how"), CASES, ids=[f"{f}-{h}" for f, h in CASES])
def test_every_command_on_a_damaged_run_folder_says_one_line(
    tiny_run: Path, complete_run: Path, tmp_path: Path, file: str, how: str
) -> None:
    run = _damaged_copy(complete_run, tmp_path, file, how)
    image = next((tiny_run.parents[1] / "data" / "images").iterdir())
    for name, args in _commands(run, image, tmp_path).items():
        result = CliRunner().invoke(app, args, env={"COLUMNS": "250", "NO_COLOR": "1"})
        crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
        assert not crashed and "Traceback" not in result.output, (name, repr(result.exception))
        if result.exit_code != 0:
            errors = [line for line in result.output.splitlines() if line.startswith("error:")]
            assert len(errors) == 1, (name, result.output)
        if "model" in file and name == "predict":  # the remedy is to train the job again
            assert "matseg run PROFILE --resume" in result.output and "re-save" not in result.output


# --- files others on a shared filesystem can read ---------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_respect_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    from matseg.atomic import write_bytes, write_csv, write_json

    old = os.umask(umask)
    try:
        written = [
            write_bytes(tmp_path / "model.safetensors", b"x"),
            write_json(tmp_path / "record.json", {"a": 1}),
            write_csv(tmp_path / "results.csv", [{"a": 1}]),
        ]
        plain = tmp_path / "log.txt"
        plain.write_text("as any file")
    finally:
        os.umask(old)
    for path in [*written, plain]:
        assert path.stat().st_mode & 0o777 == mode, path


# --- masks of one dataset that disagree on their encoding ------------------------------------


def _binary(rng: np.random.Generator) -> np.ndarray:
    return np.where(rng.random((32, 32)) > 0.5, 255, 0).astype(np.uint8)


def test_masks_mixing_binary_and_instance_ids_are_refused_naming_them(
    data_maker: DataMaker,
) -> None:
    from matseg.datasets.infer import infer_encoding

    rng = np.random.default_rng(0)
    for i in range(8):
        data_maker.mask(f"m{i}.png", _binary(rng))
    ids = np.zeros((32, 32), np.uint8)
    ids[2:10, 2:10], ids[12:20, 12:20], ids[22:30, 4:12] = 1, 2, 3  # instances 1..3 (< 128)
    data_maker.mask("ids_a.png", ids)
    data_maker.mask("ids_b.png", ids)
    guess = infer_encoding(sorted(data_maker.masks.iterdir()))
    assert guess.encoding is None, guess.reason
    assert "8 of 10 sampled read as binary, 2 differ" in guess.reason
    assert "ids_a.png (indices, values [0, 1, 2, 3])" in guess.reason
    assert "ids_b.png" in guess.reason


def test_anti_aliased_masks_are_counted_one_by_one(data_maker: DataMaker) -> None:
    from matseg.datasets.infer import infer_encoding

    rng = np.random.default_rng(1)
    for i in range(8):
        data_maker.mask(f"m{i}.png", _binary(rng))
    for i in range(2):
        soft = _binary(rng)
        soft[0, :6] = [30, 60, 90, 120, 150, 180]  # an anti-aliased edge
        data_maker.mask(f"soft{i}.png", soft)
    guess = infer_encoding(sorted(data_maker.masks.iterdir()))
    assert guess.encoding is not None and guess.encoding.type == "threshold"
    assert "in 2 of 10 sampled masks (the rest binary)" in guess.reason


def test_colour_beside_grey_masks_is_refused(data_maker: DataMaker) -> None:
    from matseg.datasets.infer import infer_encoding

    rng = np.random.default_rng(2)
    for i in range(3):
        data_maker.mask(f"m{i}.png", _binary(rng))
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[:16, :, 0] = 255
    data_maker.mask("overlay.png", colour)
    guess = infer_encoding(sorted(data_maker.masks.iterdir()))
    assert guess.encoding is None and "overlay.png (colour" in guess.reason


def test_a_colour_the_table_forgot_is_an_error_not_the_default_class(
    data_maker: DataMaker,
) -> None:
    from matseg.datasets.masks import MaskInput, decode_mask
    from matseg.datasets.spec import ColourEncoding

    overlay = np.repeat(data_maker.noise()[..., None], 3, axis=-1)  # the grey micrograph
    overlay[4:12, 4:12] = (255, 0, 0)  # listed
    overlay[16:30, 16:30] = (0, 255, 0)  # forgotten: saturated green over 19% of the mask
    enc = ColourEncoding.model_validate({"colours": [{"rgb": [255, 0, 0], "class_id": 1}]})
    with pytest.raises(DataError) as caught:
        decode_mask(enc, MaskInput("m.png", raw=overlay))
    line = _one_line(caught.value)
    assert line.startswith("m.png: ") and "rgb (0, 255, 0) on 19.1%" in line
    overlay[16:30, 16:30] = (128, 128, 128)  # grey: the micrograph, the default class
    assert decode_mask(enc, MaskInput("m.png", raw=overlay))[20, 20] == 0
    overlay[0, 0] = (0, 255, 0)  # a trace (one pixel of 1024) stays a trace
    assert decode_mask(enc, MaskInput("m.png", raw=overlay))[0, 0] == 0


# --- what `run` refuses, `profile validate`, `plan` and `datasets check` refuse first ---------


@pytest.mark.parametrize(
    ("model", "field"),
    [
        ({"encoders": ["resnet1800"]}, "encoder"),
        ({"encoders": ["tu-not_a_timm_model"]}, "encoder"),
        ({"decoders": ["unett"]}, "decoder"),
        ({"weights": "imagenett"}, "weights"),
        ({"weights": "missing/weights.safetensors"}, "weights"),
        ({"weights_url": "https://example.org/w.pt"}, "weights_url"),
    ],
)
@pytest.mark.parametrize("command", ["profile validate", "plan"])
def test_validate_and_plan_refuse_what_run_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: dict, field: str, command: str
) -> None:
    monkeypatch.chdir(tmp_path)
    grid = {"encoders": ["resnet18"], "decoders": ["unet"], "weights": "none"} | model
    path = tmp_path / "profile.json"
    root = Path(__file__).resolve().parents[1]
    path.write_text(json.dumps(PROFILE | {"datasets": [str(root / "examples" / "nasa-super.json")],
                                          "model": grid}))  # fmt: skip
    result = _cli(*command.split(), str(path))
    assert result.exit_code != 0
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert f"{field}: expected" in line, line


def test_dataset_check_refuses_images_that_mix_grey_and_rgb(data_maker: DataMaker) -> None:
    data_maker.good(6)
    data_maker.image("good0.png", np.repeat(data_maker.noise()[..., None], 3, -1) // 2 * 2 + 1)
    data_maker.image("good1.png", data_maker.noise((32, 32, 3)))
    spec = data_maker.spec_file(encoding={"type": "index"})
    result = _cli("datasets", "check", str(spec))
    assert result.exit_code != 0 and "verdict: usable" not in result.output
    assert "4 images with 1 channel(s) and 2 with 3 (e.g. good0)" in result.output


# --- training that diverges -------------------------------------------------------------------


def test_a_job_whose_loss_is_not_finite_fails_and_leaves_no_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matseg.errors import TrainingError
    from matseg.pipeline import run
    from matseg.training import SegmentationModule

    path = _tiny_profile(tmp_path, "diverges", max_epochs=3, learning_rate=1e3)
    loss = SegmentationModule._loss
    steps = []

    def nan_on_the_third_batch(self: Any, logits: Any, target: Any) -> Any:
        steps.append(1)
        value = loss(self, logits, target)
        return value * float("nan") if len(steps) >= 3 else value

    monkeypatch.setattr(SegmentationModule, "_loss", nan_on_the_third_batch)
    with pytest.raises(TrainingError) as caught:
        run(load_profile(path), tmp_path / "runs", progress_bar=False)
    line = _one_line(caught.value)
    assert "expected a finite training loss, found loss nan at epoch" in line
    assert "learning rate 1000" in line and "--resume" in line
    assert len(steps) == 3  # stopped at once: no further batch was trained
    assert not list((tmp_path / "runs").glob("*/jobs/*/metrics.json"))
    assert not list((tmp_path / "runs").glob("*/results.csv"))


# --- signals: Ctrl-C and a scheduler's SIGTERM stop the run, which stays resumable ------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_run_cleanly_and_it_resumes(tmp_path: Path, sig: int) -> None:
    profile = _tiny_profile(tmp_path, "signals", max_epochs=3, crops_per_epoch=48)
    command = [sys.executable, "-m", "matseg", "run", str(profile), "--out", str(tmp_path / "r")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(1200):  # until the job's training has begun (its first epoch logged)
        logs = list((tmp_path / "r").glob("*/jobs/*/log.txt"))
        if logs and "epoch" in logs[0].read_text():
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    if sig == signal.SIGTERM:  # meanwhile a second run of the same folder is refused
        second = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
        assert second.returncode != 0 and f"pid {proc.pid}" in second.stderr, second.stderr
    proc.send_signal(sig)
    try:
        _, stderr = proc.communicate(timeout=120)  # bounded: a `timeout` around it works
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{signal.Signals(sig).name} did not stop the run")
    assert proc.returncode == 128 + sig, stderr[-2000:]
    assert f"stopped by {signal.Signals(sig).name}" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr
    folder = next((tmp_path / "r").iterdir())
    assert not (folder / ".lock").exists() and not list(folder.rglob("*.tmp"))
    assert not list(folder.glob("jobs/*/metrics.json"))  # stopped before its last epoch
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "trained 1, reused 0" in resumed.stdout and folder.name in resumed.stdout
    assert "took over a stale lock" not in resumed.stderr  # the stopped run released it


# --- messages that said the wrong thing --------------------------------------------------------


def test_a_value_missing_from_the_table_is_named_with_its_share() -> None:
    from matseg.datasets.masks import MaskInput, decode_mask
    from matseg.datasets.spec import IndexEncoding

    mask = np.zeros((10, 10), np.uint8)
    mask[:5] = 255
    mask[0, :3] = 128
    with pytest.raises(DataError) as caught:
        decode_mask(IndexEncoding(values={0: 0, 255: 1}), MaskInput("m.png", raw=mask))
    line = _one_line(caught.value)
    assert "expected only the values the encoding's table lists (0, 255)" in line
    assert "found value(s) 128 on 3.0% of the pixels" in line and "'values'" in line


def test_a_folder_where_a_file_belongs_is_called_a_folder(tmp_path: Path) -> None:
    from matseg.errors import read_json
    from matseg.models import read_state

    (tmp_path / "spec.json").mkdir()
    (tmp_path / "image.png").mkdir()
    (tmp_path / "w.safetensors").mkdir()
    for call in (lambda: read_json(tmp_path / "spec.json", "a spec"),
                 lambda: read_array(tmp_path / "image.png"),
                 lambda: read_state(tmp_path / "w.safetensors")):  # fmt: skip
        with pytest.raises(UserError) as caught:
            call()
        assert "found a folder, not a file" in _one_line(caught.value)


@pytest.mark.parametrize(("roi", "found"), [("8,8,8,20", "height 0"), ("8,20,30,4", "width -16")])
def test_an_empty_region_is_called_empty_not_outside(roi: str, found: str) -> None:
    from matseg.datasets.spec import spec_from_dict
    from matseg.explain.roi import ExplainInput, region_of_interest

    target = ExplainInput(Path("x.png"), np.zeros((1, 32, 32), np.float32), (32, 32), (0, 0, 0, 0))
    with pytest.raises(DataError) as caught:
        region_of_interest(roi, target, spec_from_dict({"name": "d"}))
    line = _one_line(caught.value)
    assert "expected a box with y0 < y1 and x0 < x1" in line and found in line


# --- precision: auto, bf16 only where it is native ----------------------------------------------


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16-mixed"), (False, "32")])
def test_precision_auto_resolves_by_the_hardware_and_the_job_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool, expected: str
) -> None:
    import torch

    from matseg.datasets.synthetic import write_synthetic_dataset
    from matseg.models import resolve_precision
    from matseg.plan import compile_plan
    from matseg.profile import demo_profile, starting_profile

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto") == expected
    assert resolve_precision("32") == "32" and resolve_precision("bf16-mixed") == "bf16-mixed"
    assert starting_profile()["training"]["precision"] == "auto"
    assert demo_profile("examples/nasa-super.json")["training"]["precision"] == "auto"
    root = Path(__file__).resolve().parents[1]
    for example in sorted((root / "examples" / "profiles").glob("*.json")):
        assert json.loads(example.read_text())["training"].get("precision", "32") != "bf16-mixed"
    write_synthetic_dataset(tmp_path / "d", kind="pores", n_images=8, size=32)
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"name": "p", "datasets": ["d/dataset.json"],
                                "model": {"encoders": ["resnet18"], "weights": "none"},
                                "training": {"precision": "auto"}}))  # fmt: skip
    (job, *_) = compile_plan(load_profile(path)).jobs
    assert job.training.precision == expected  # hashed and recorded as used


# --- progress when nobody watches a terminal ---------------------------------------------------


def test_without_a_terminal_run_prints_a_line_per_job_and_epoch_and_a_heartbeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("matseg.training.HEARTBEAT_S", 0.0)  # a heartbeat after every batch
    monkeypatch.chdir(tmp_path)
    _tiny_profile(tmp_path, "quiet", ("unet", "fpn"), max_epochs=2, crops_per_epoch=8)
    result = _cli("run", "profile.json", "--out", "runs")  # CliRunner's stdout is no terminal
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(x.startswith("job 1 of 2: synthetic-particles / resnet18 + unet") for x in lines)
    second = next(x for x in lines if x.startswith("job 2 of 2:"))
    assert "left" in second  # the grid's remaining time, from the first job's
    epochs = [x for x in lines if ": epoch " in x and "val IoU" in x]
    assert len(epochs) == 4 and "epoch 1 of at most 2, loss " in epochs[0]
    assert "s per epoch; at most" in epochs[0] and "for the grid" in epochs[0]
    assert any("batch 1 of 2" in x and "into the epoch" in x for x in lines)


# --- kill -9 during quality control and explanations, then --resume ---------------------------

STAGES_PROFILE = {
    "name": "stages", "datasets": ["data/dataset.json"],
    "model": {"encoders": ["resnet18"], "decoders": ["unet"], "weights": "none"},
    "training": {"batch_size": 4, "max_epochs": 2, "patch_size": 64},
    "evaluation": {"protocol": "holdout"},
    "qc": {"enabled": True, "extractors": ["encoder", "classical"], "detector": "knn",
           "compare": ["knn", "mahalanobis"], "patch_size": 32, "max_patches_per_image": 8,
           "synthetic_shifts": True},
    "explain": {"enabled": True, "images": 2, "window": 8, "stride": 4},
}  # fmt: skip


def _stage_outputs(folder: Path) -> dict[str, Any]:
    """What quality control and the explanations wrote, without wall-clock times and the
    folder they were written to."""
    out: dict[str, Any] = {}
    patterns = ("qc/*/*.json", "qc/*/*.csv", "explain/*/*/*.json", "explain/*/*/*.npy")
    for path in sorted(p for pattern in patterns for p in folder.glob(pattern)):
        key = path.relative_to(folder).as_posix()
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            out[key] = {k: v for k, v in data.items() if k not in ("seconds", "folder")}
        elif path.suffix == ".npy":
            out[key] = np.load(path).tolist()
        else:
            out[key] = path.read_text()
    return out


@pytest.fixture(scope="module")
def stages_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from matseg.datasets.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("stages")
    write_synthetic_dataset(root / "data", kind="particles", n_images=16, size=64, seed=0)
    (root / "profile.json").write_text(json.dumps(STAGES_PROFILE))
    done = subprocess.run(
        [sys.executable, "-m", "matseg", "run", str(root / "profile.json"), "--out",
         str(root / "ref")], capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    outputs = _stage_outputs(next((root / "ref").iterdir()))
    assert any(k.startswith("qc/") for k in outputs) and any(
        k.startswith("explain/") for k in outputs
    )
    return root, outputs


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["qc/*/embeddings.npz", "explain/*/*"])
def test_kill_9_during_qc_or_explain_then_resume_gives_the_same_outputs(
    stages_reference: tuple[Path, dict[str, Any]], tmp_path: Path, moment: str
) -> None:
    root, reference = stages_reference
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "matseg", "run", str(root / "profile.json"), "--out", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(6000):  # until the stage has begun
        if list(out.glob(f"*/{moment}")):
            break
        assert proc.poll() is None, "the run ended before the stage began"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    folder = next(out.iterdir())
    assert not (folder / "report.html").exists()  # killed before the end
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "trained 0, reused 1" in resumed.stdout
    assert _stage_outputs(folder) == reference
