"""Box-restricted forward passes: equal to the full forward pass cropped, for every decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from matseg.explain import heatmap as heatmap_module
from matseg.explain import region as region_module
from matseg.explain.heatmap import counterfactual_heatmap
from matseg.explain.region import (
    BoxForward,
    RegionUnsupported,
    fold_batchnorm,
    fold_constants,
    restrict,
    reuse_buffers,
    trace,
)
from matseg.models import build_model

# inside, on a border, in a corner, one pixel, not aligned to any stride
BOXES = [(20, 44, 30, 70), (0, 9, 0, 96), (50, 64, 83, 96), (31, 32, 47, 48), (3, 61, 5, 91)]


def _with_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics, so folding them into the convolutions is tested."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model.eval()


def _check_boxes(model: torch.nn.Module, x: torch.Tensor) -> list[float]:
    """The box graph of each box against the model itself; returns the computed shares."""
    full = trace(model, x, bf16=False)
    fold_constants(full)
    fold_batchnorm(full)
    with torch.no_grad():
        ShapeProp(full).propagate(x)
        expected = model(x)
    shares = []
    for box in BOXES:
        net, share = restrict(full, box)
        with torch.no_grad():
            ShapeProp(net).propagate(x)
            reuse_buffers(net)
            out = net(x)
        want = expected[..., box[0] : box[1], box[2] : box[3]]
        assert out.shape == want.shape, box
        torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
        shares.append(share)
    return shares


@pytest.mark.parametrize(
    "encoder,decoder",
    [
        ("resnet18", "unet"),
        ("resnet18", "unetplusplus"),
        ("resnet18", "deeplabv3plus"),  # ASPP's global pooling, align_corners upsampling
        ("resnet18", "deeplabv3"),
        ("resnet18", "fpn"),  # group norm, bilinear merge
        ("resnet18", "linknet"),  # transposed convolutions
        ("resnet18", "pspnet"),  # adaptive pooling
        ("resnet18", "manet"),
        ("efficientnet-b0", "unet"),  # "same" padding, squeeze-excitation, SiLU
    ],
)
def test_box_graph_equals_the_model_cropped(encoder: str, decoder: str) -> None:
    torch.manual_seed(0)
    model, _ = build_model(encoder, decoder, 2, 3)
    model = _with_statistics(model)
    x = torch.randn(2, 2, 64, 96)
    shares = _check_boxes(model, x)
    assert all(0 < s <= 1 for s in shares) and min(shares) < 1
    if encoder == "resnet18" and decoder in ("unet", "unetplusplus"):
        assert shares[3] < 0.6, shares  # local all through: a one-pixel box computes far less


class _Zoo(torch.nn.Module):
    """Layers smp's models rarely use: every rule of the box algebra once."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 4, 5, stride=3, padding=2)
        self.dilated = torch.nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2)
        self.pool = torch.nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.avg = torch.nn.AvgPool2d(2)
        self.norm = torch.nn.GroupNorm(2, 4)
        self.up = torch.nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.head = torch.nn.Conv2d(12, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        a = F.relu(self.stem(F.pad(x, (1, 0, 2, 1))))  # asymmetric padding
        a = a + self.dilated(a)
        a = a * a.mean(dim=1, keepdim=True).sigmoid()  # channel attention, per pixel
        b = self.avg(self.pool(a))
        b = self.norm(b) * torch.sigmoid(b.mean(dim=(2, 3), keepdim=True))
        c = F.interpolate(b, size=(h, w), mode="bilinear", align_corners=True)
        d = F.interpolate(self.up(b), size=(h, w), mode="nearest")  # not a whole-number zoom
        e = F.interpolate(a, scale_factor=3, mode="bilinear", align_corners=False)
        e = F.pad(e, (0, w - e.shape[-1], 0, h - e.shape[-2]))
        return self.head(torch.cat([c, d, e], dim=1))


def test_every_rule_of_the_box_algebra() -> None:
    torch.manual_seed(0)
    model = _Zoo().eval()
    x = torch.randn(2, 1, 64, 96)
    shares = _check_boxes(model, x)
    assert min(shares) < 1


class _OneConvolution(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)


class _Mutating(_OneConvolution):
    """A ReLU whose input is read again afterwards: it must not run in place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.relu(y) + y


def test_buffers_are_reused_only_when_nothing_else_reads_them() -> None:
    model = _Mutating().eval()
    x = torch.randn(1, 1, 16, 16)
    forward = BoxForward(model, x, (0, 16, 0, 16), "32")
    assert not any(str(n.target).startswith("aten.relu_") for n in forward.net.graph.nodes)
    torch.testing.assert_close(forward(x), model(x))
    torch.manual_seed(0)
    unet, _ = build_model("resnet18", "unet", 1, 2)
    unet_forward = BoxForward(unet.eval(), torch.randn(1, 1, 64, 64), (8, 40, 8, 40), "32")
    inplace = [n for n in unet_forward.net.graph.nodes if str(n.target).startswith("aten.relu_")]
    assert len(inplace) > 10  # the ReLUs after convolutions do run in place


def test_bf16_box_graph_keeps_autocast_casts() -> None:
    """bf16: the graph holds bf16 weights, cast once, and stays close to autocast's model."""
    torch.manual_seed(0)
    model, _ = build_model("resnet18", "unet", 1, 2)
    model = _with_statistics(model)
    x = torch.randn(2, 1, 64, 64)
    forward = BoxForward(model, x, (16, 48, 16, 48), "bf16-mixed")
    nodes = forward.net.graph.nodes
    weights = [getattr(forward.net, n.target) for n in nodes if n.op == "get_attr"]
    assert weights and all(w.dtype == torch.bfloat16 for w in weights if w.dim() == 4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(x)[..., 16:48, 16:48].float()
    out = forward(x).float()
    assert out.dtype == torch.float32 and forward.folded > 10
    assert float((out - expected).abs().max()) < 0.05 * float(expected.abs().max())


class _DataDependent(_OneConvolution):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if float(y.mean()) > 0 else -y  # branches on a value: cannot be traced


def _image_and_region(
    h: int, w: int, rows: slice, cols: slice, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    image = np.random.default_rng(seed).normal(size=(1, h, w)).astype(np.float32)
    roi = np.zeros((h, w), dtype=bool)
    roi[rows, cols] = True
    return image, roi


def _boxed_and_whole(model, image, roi, window: int, stride: int):  # type: ignore[no-untyped-def]
    """The heatmap with box-restricted forward passes and with the whole model."""
    boxed = counterfactual_heatmap(model, image, roi, window=window, stride=stride, compile="off")
    whole = counterfactual_heatmap(
        model, image, roi, window=window, stride=stride, compile="off", restrict=False
    )
    return boxed, whole


def test_untraceable_model_falls_back_to_whole_forward_passes() -> None:
    with pytest.raises(RegionUnsupported):
        BoxForward(_DataDependent().eval(), torch.randn(1, 1, 16, 16), (0, 8, 0, 8), "32")
    torch.manual_seed(0)
    image, roi = _image_and_region(32, 32, slice(8, 20), slice(8, 20))
    boxed, whole = _boxed_and_whole(_DataDependent().eval(), image, roi, 8, 4)
    assert not boxed.restricted and "cannot be traced" in boxed.notes[0]
    np.testing.assert_allclose(boxed.window_scores, whole.window_scores, rtol=1e-5, atol=1e-7)


def test_box_heatmap_on_an_odd_sized_image_at_its_border() -> None:
    """Images that are not a multiple of 32 are reflect-padded before the graph; a region at
    the bottom-right corner reads that padding: the map still equals the whole-model map."""
    torch.manual_seed(0)
    model, _ = build_model("resnet18", "unet", 1, 3)
    model = _with_statistics(model)
    image, roi = _image_and_region(50, 70, slice(38, 50), slice(55, 70), seed=1)
    boxed, whole = _boxed_and_whole(model, image, roi, 8, 6)
    assert boxed.restricted and boxed.window_scores.max() > 0
    np.testing.assert_allclose(boxed.window_scores, whole.window_scores, rtol=1e-4, atol=1e-6)


def test_a_failing_box_algebra_falls_back_to_whole_forward_passes(monkeypatch) -> None:
    """An operation the box algebra mishandles is not a crash: the model runs whole, noted."""

    def broken(gm: object, box: object) -> None:
        raise KeyError("held box of an unexpected operation")

    monkeypatch.setattr(region_module, "restrict", broken)
    torch.manual_seed(0)
    model, _ = build_model("resnet18", "unet", 1, 2)
    image, roi = _image_and_region(64, 64, slice(16, 40), slice(20, 44))
    hm = counterfactual_heatmap(model.eval(), image, roi, window=16, stride=16, compile="off")
    assert not hm.restricted and "no box graph (KeyError" in hm.notes[0]
    assert hm.window_scores.max() > 0


def test_a_box_graph_that_disagrees_with_the_full_one_is_not_used(monkeypatch) -> None:
    """The check at construction: a wrong graph is caught and the model runs whole."""
    torch.manual_seed(0)
    model, _ = build_model("resnet18", "unet", 1, 2)
    model.eval()
    image, roi = _image_and_region(64, 64, slice(16, 40), slice(20, 44))
    whole = counterfactual_heatmap(model, image, roi, window=16, stride=8, restrict=False)
    boxed = counterfactual_heatmap(model, image, roi, window=16, stride=8)
    assert boxed.restricted and not whole.restricted
    np.testing.assert_allclose(boxed.window_scores, whole.window_scores, rtol=1e-4, atol=1e-6)

    class Broken(BoxForward):
        def __init__(self, *args: object) -> None:
            super().__init__(*args)  # type: ignore[arg-type]
            self.check = self.check + 1.0  # as if a slice were off by a pixel

    monkeypatch.setattr(heatmap_module, "BoxForward", Broken)
    caught = counterfactual_heatmap(model, image, roi, window=16, stride=8)
    assert not caught.restricted and "differs from the full one" in caught.notes[0]
    np.testing.assert_allclose(caught.window_scores, whole.window_scores, rtol=1e-4, atol=1e-6)
