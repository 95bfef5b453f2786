"""Feature extractors: shapes, what they see, and clear errors when weights are absent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from matseg.datasets.synthetic import generate
from matseg.errors import ModelError
from matseg.models import build_model
from matseg.qc.extractors import (
    EXTRACTORS,
    ExtractorContext,
    make_extractor,
    mask_morphology,
)
from matseg.qc.shifts import apply_shift


def _patches(n: int = 4, c: int = 1, size: int = 64) -> np.ndarray:
    return np.stack(
        [np.repeat(generate("grains", size=size, seed=i)[0][None], c, 0) for i in range(n)]
    ).astype(np.float32)


def test_registry_names() -> None:
    assert {"encoder", "classical", "mask-morphology", "efficientnet-lite0"} <= set(EXTRACTORS)
    assert {"clip-vit-b32", "vit-msn-base", "dinov2-base"} <= set(EXTRACTORS)
    with pytest.raises(ValueError, match="timm:<model>"):
        make_extractor("sift", ExtractorContext())


def test_encoder_features_pool_every_stage() -> None:
    torch.manual_seed(0)
    model, _ = build_model("resnet18", "unet", 1, 2)
    emb = make_extractor("encoder", ExtractorContext(model=model)).embed(_patches())
    # resnet18 stages: 64, 64, 128, 256, 512 channels, mean and std of each
    assert emb.shape == (4, 2 * (64 + 64 + 128 + 256 + 512))
    assert np.isfinite(emb).all()
    with pytest.raises(ModelError, match="a trained segmentation model"):
        make_extractor("encoder", ExtractorContext())


def test_classical_features_see_blur_and_noise() -> None:
    ext = make_extractor("classical", ExtractorContext())
    base = _patches(3, c=2)
    emb = ext.embed(base)
    assert emb.shape[0] == 3 and emb.shape[1] % 2 == 0  # per channel
    blurred = ext.embed(np.stack([apply_shift(p, "blur", 1.0) for p in base]))
    noisy = ext.embed(np.stack([apply_shift(p, "noise", 1.0) for p in base]))
    spread = np.linalg.norm(emb - emb.mean(0), axis=1).mean()  # natural variation
    assert np.linalg.norm(blurred - emb, axis=1).min() > spread
    assert np.linalg.norm(noisy - emb, axis=1).min() > spread


def test_mask_morphology_counts_objects() -> None:
    mask = np.zeros((40, 40), np.int64)
    mask[5:10, 5:10] = 1
    mask[20:30, 20:30] = 1
    feats = mask_morphology(mask, 2)
    # [edge density] + per class [fraction, boundary, objects per 1e4 px, log median, log max]
    assert feats[1 + 5] == pytest.approx((25 + 100) / 1600)
    assert feats[1 + 5 + 2] == pytest.approx(1e4 * 2 / 1600)
    assert feats[1 + 5 + 4] == pytest.approx(np.log1p(100))


def test_efficientnet_lite0_works_offline() -> None:
    emb = make_extractor("efficientnet-lite0", ExtractorContext()).embed(_patches(2, size=32))
    assert emb.shape == (2, 1280) and np.isfinite(emb).all()


def test_pretrained_extractors_fail_fast_offline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, connections: list[Any]
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    with pytest.raises(ModelError, match="pretrained weights on disk"):
        make_extractor("timm:resnet18", ExtractorContext())
    with pytest.raises(ModelError, match="missing"):
        make_extractor(
            "timm:resnet18", ExtractorContext(weights={"timm:resnet18": str(tmp_path / "x")})
        )
    for name in ("clip-vit-b32", "dinov2-base", "vit-msn-base"):
        with pytest.raises(ModelError, match=name):
            make_extractor(name, ExtractorContext())
    assert connections == []  # offline: decided before any network attempt


def test_timm_extractor_from_a_local_file(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    net = timm.create_model("resnet18", pretrained=False, num_classes=0)
    path = tmp_path / "resnet18.safetensors"
    save_file(net.state_dict(), str(path))
    ext = make_extractor("timm:resnet18", ExtractorContext(weights={"timm:resnet18": str(path)}))
    assert ext.embed(_patches(2, size=32)).shape == (2, 512)


def test_foundation_extractor_from_a_local_folder(tmp_path: Path) -> None:
    """The transformers path end to end, with a tiny randomly initialised DINOv2 saved to disk."""
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        image_size=56, patch_size=14,
    )  # fmt: skip
    transformers.Dinov2Model(config).save_pretrained(tmp_path / "dino")
    ext = make_extractor(
        "dinov2-base", ExtractorContext(weights={"dinov2-base": str(tmp_path / "dino")})
    )
    assert ext.embed(_patches(3, size=32)).shape == (3, 32)
