"""The counterfactual heatmap against a brute-force loop and against Captum's Occlusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from matseg.explain.heatmap import (
    counterfactual_heatmap,
    influence_footprint,
    predict_logits,
    spread,
    window_starts,
)
from matseg.explain.kernels import perturbed_source
from matseg.models import build_model


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    net, _ = build_model("resnet18", "unet", 1, 3)
    return net.eval()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(1, 64, 64)).astype(np.float32)


def _region() -> np.ndarray:
    roi = np.zeros((64, 64), dtype=bool)
    roi[20:36, 24:44] = True
    return roi


def _brute_force(model, image, roi, kernel, window, stride, target="probabilities"):
    """One perturbed forward pass per window, nothing shared, nothing skipped."""
    x = torch.from_numpy(image)[None]
    source = torch.from_numpy(perturbed_source(image, kernel, window))
    a = torch.from_numpy(roi.astype(np.float32))

    def z(inp: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = predict_logits(model, inp, False)
        if target == "mask":
            return torch.nn.functional.one_hot(logits.argmax(1), 3).permute(0, 3, 1, 2).float()
        return logits.softmax(1)

    clean = z(x) * a
    ys, xs = window_starts(64, window, stride), window_starts(64, window, stride)
    out = np.zeros((len(ys), len(xs)))
    for i, y in enumerate(ys):
        for j, xx in enumerate(xs):
            p = x.clone()
            p[0, :, y : y + window, xx : xx + window] = source[:, y : y + window, xx : xx + window]
            out[i, j] = float((z(p) * a - clean).abs().sum())
    return out


@pytest.mark.parametrize("kernel", ["blur", "mean", "zero", "noise"])
def test_equals_brute_force_in_fp32(model, image, kernel: str) -> None:
    roi = _region()
    hm = counterfactual_heatmap(model, image, roi, kernel=kernel, window=16, stride=8, batch_size=5)
    expected = _brute_force(model, image, roi, kernel, 16, 8)
    np.testing.assert_allclose(hm.window_scores, expected, rtol=1e-4, atol=1e-5)
    assert hm.window_scores.max() > 0


def test_hard_mask_target_and_exact_mode(model, image) -> None:
    roi = _region()
    hm = counterfactual_heatmap(model, image, roi, window=8, stride=4, target="mask")
    expected = _brute_force(model, image, roi, "blur", 8, 4, target="mask")
    np.testing.assert_allclose(hm.window_scores, expected, atol=1e-6)
    small = np.random.default_rng(1).normal(size=(1, 32, 32)).astype(np.float32)
    exact = counterfactual_heatmap(model, small, None, window=4, stride=1, compile="off")
    assert exact.window_scores.shape == (29, 29) and exact.image_map.shape == (32, 32)


def test_reach_skips_only_windows_that_cannot_matter(image) -> None:
    """A shallow net has a small footprint: far windows are skipped, and their H is really 0."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 2, 3, padding=1)).eval()  # fmt: skip
    big = np.random.default_rng(2).normal(size=(1, 64, 64)).astype(np.float32)
    roi = np.zeros((64, 64), dtype=bool)
    roi[30:34, 30:34] = True
    assert influence_footprint(net, (1, 64, 64)) == (2, 2, 2, 2)
    fast = counterfactual_heatmap(net, big, roi, window=8, stride=4)
    full = counterfactual_heatmap(net, big, roi, window=8, stride=4, use_reach=False)
    assert fast.skipped > 100 and fast.evaluated < 20
    np.testing.assert_allclose(fast.window_scores, full.window_scores, atol=1e-6)


def test_same_map_as_captum_occlusion(model, image) -> None:
    """Constant fill, same windows: Captum's attribution is -H spread the same way."""
    captum = pytest.importorskip("captum.attr")
    roi = _region()
    hm = counterfactual_heatmap(model, image, roi, kernel="mean", window=16, stride=8)
    a = torch.from_numpy(roi.astype(np.float32))
    x = torch.from_numpy(image)[None]
    with torch.no_grad():
        clean = predict_logits(model, x, False).softmax(1) * a

    def f(inp: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = predict_logits(model, inp, False).softmax(1) * a
        return (out - clean).abs().sum(dim=(1, 2, 3))

    baseline = float(image.mean())
    attr = captum.Occlusion(f).attribute(
        x, sliding_window_shapes=(1, 16, 16), strides=(1, 8, 8), baselines=baseline,
        perturbations_per_eval=8,
    )  # fmt: skip
    np.testing.assert_allclose(hm.image_map, -attr[0, 0].numpy(), rtol=1e-4, atol=1e-5)


def test_compiled_forward_gives_the_eager_map(model, image, monkeypatch) -> None:
    """Inductor with frozen weights: the fp32 map equals the eager one within float noise, the
    last, partial batch is padded (one graph), and a second model is not served the first
    model's frozen weights."""
    roi = _region()
    eager = counterfactual_heatmap(model, image, roi, window=16, stride=8, compile="off")
    fast = counterfactual_heatmap(model, image, roi, window=16, stride=8, compile="on")
    assert fast.compiled and not eager.compiled and fast.evaluated % fast.batch_size != 0
    np.testing.assert_allclose(fast.window_scores, eager.window_scores, rtol=1e-4, atol=1e-5)
    torch.manual_seed(1)
    other, _ = build_model("resnet18", "unet", 1, 3)
    other_eager = counterfactual_heatmap(
        other.eval(), image, roi, window=16, stride=8, compile="off"
    )
    other_fast = counterfactual_heatmap(other, image, roi, window=16, stride=8, compile="on")
    assert np.abs(other_eager.window_scores - eager.window_scores).max() > 1e-3
    np.testing.assert_allclose(
        other_fast.window_scores, other_eager.window_scores, rtol=1e-4, atol=1e-5
    )

    def broken_compile(module: torch.nn.Module, **kwargs: object) -> object:
        def run(x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("InductorError: no lowering for an exotic operator")

        return run

    with monkeypatch.context() as patched:
        patched.setattr(torch, "compile", broken_compile)
        fell_back = counterfactual_heatmap(model, image, roi, window=16, stride=8, compile="on")
    assert not fell_back.compiled and "no lowering" in fell_back.notes[0]
    # its last batch was padded for the compiled graph: the same map up to float rounding
    np.testing.assert_allclose(fell_back.window_scores, eager.window_scores, rtol=1e-5)
    monkeypatch.setenv("CXX", "no-such-compiler")
    fallback = counterfactual_heatmap(model, image, roi, window=16, stride=8, compile="on")
    assert not fallback.compiled and "no C++ compiler" in fallback.notes[0]
    np.testing.assert_array_equal(fallback.window_scores, eager.window_scores)
    with pytest.raises(ValueError, match="compile: expected auto, on or off"):
        counterfactual_heatmap(model, image, roi, compile="yes")  # type: ignore[arg-type]


def test_spread_averages_covering_windows() -> None:
    scores = np.array([[1.0, 3.0]])
    out = spread(scores, [0], [0, 2], 4, (4, 6))
    assert out[0, 0] == 1.0 and out[0, 2] == 2.0 and out[0, 5] == 3.0


def test_bad_input(model, image) -> None:
    with pytest.raises(ValueError, match="roi: expected the image's size"):
        counterfactual_heatmap(model, image, np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="at least one pixel"):
        counterfactual_heatmap(model, image, np.zeros((64, 64), bool))
    with pytest.raises(ValueError, match="kernel"):
        counterfactual_heatmap(model, image, None, kernel="sharpen")
