"""Export a job's model: ONNX (checked against PyTorch with onnxruntime) and a model folder that
segmentation-models-pytorch's ``from_pretrained`` reads (config.json + model.safetensors), with a
model card (profile, data provenance, metrics with CIs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from matseg.atomic import write_bytes
from matseg.errors import ModelError
from matseg.trained import TrainedJob


@dataclass
class OnnxExport:
    path: Path
    opset: int
    max_abs_difference: float  # onnxruntime against PyTorch on a random input, fp32
    input_shape: tuple[int, ...]


def export_onnx(
    trained: TrainedJob, path: Path, size: int | None = None, opset: int = 17
) -> OnnxExport:
    """The model as ONNX (dynamic batch, height, width), verified with onnxruntime."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelError(
            "ONNX export", "onnx and onnxruntime installed", "missing",
            'pip install "matseg[export]"',
        ) from exc  # fmt: skip
    model = trained.model.eval().float()
    size = size or trained.job.training.patch_size or 256
    x = torch.randn(
        1, trained.data.in_channels, size, size, generator=torch.Generator().manual_seed(0)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.tmp")
    torch.onnx.export(
        model, (x,), str(tmp), input_names=["image"], output_names=["logits"], opset_version=opset,
        dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                      "logits": {0: "batch", 2: "height", 3: "width"}},
        dynamo=False,
    )  # fmt: skip
    tmp.replace(path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x).numpy()
    got = session.run(["logits"], {"image": x.numpy()})[0]
    return OnnxExport(path, opset, float(np.abs(got - expected).max()), tuple(x.shape))


def _metrics_card(trained: TrainedJob) -> str:
    rows = []
    for split, ev in trained.evaluations.items():
        s = ev.scores
        lo, hi = s.interval("macro_iou")
        ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
        major = ev.baselines.get("majority class")
        major_iou = major.macro_iou if major else None
        rows.append(
            f"| {split} | {ev.n_images} | {_f(s.macro_iou)}{ci} | {_f(s.foreground_iou)} | "
            f"{_f(major_iou)} |"
        )
    return "\n".join(rows)


def _f(value: float | None) -> str:
    return "–" if value is None or value != value else f"{value:.3f}"


def export_package(trained: TrainedJob, out: Path) -> Path:
    """``out/`` with config.json + model.safetensors (smp ``from_pretrained``) and README.md;
    for a fold ensemble, one such folder per fold model (``fold-<i>/``), ``ensemble.json``
    naming them and how they combine (mean of the softmax probabilities), and the card."""
    job, spec = trained.job, trained.data.inspection.spec
    model = trained.model.eval()
    members = list(getattr(model, "members", [])) if trained.members else [model]
    for member in members:
        if not hasattr(member, "save_pretrained"):
            raise ModelError(
                trained.label, "a segmentation-models-pytorch model", type(member).__name__
            )
    if trained.members:
        folders = []
        for i, (member, result) in enumerate(zip(members, trained.members, strict=True)):
            member.save_pretrained(str(out / f"fold-{i}"))
            folders.append({"folder": f"fold-{i}", "job": result.job.hash,
                            "fold": result.job.fold.name if result.job.fold else None})  # fmt: skip
        ensemble = {"combine": "mean of softmax probabilities", "members": folders}
        write_bytes(out / "ensemble.json", (json.dumps(ensemble, indent=2) + "\n").encode())
        how = (
            f"a fold ensemble: load each `fold-<i>/` with `segmentation_models_pytorch."
            f"from_pretrained` and average the {len(members)} models' softmax probabilities "
            "(`ensemble.json`; the ONNX file does it in one graph)"
        )
    else:
        model.save_pretrained(str(out))
        how = 'load it with `segmentation_models_pytorch.from_pretrained("<this folder>")`'
    table, metrics = _metrics_card(trained), trained.result
    profile = trained.run.read_profile_data()
    card = f"""---
library_name: segmentation-models-pytorch
tags: [semantic-segmentation, materials-science, matseg]
---
# {job.encoder} + {job.decoder} for {job.dataset}

Trained by matseg (`{trained.name}`, run `{trained.run.name}`), seed {job.seed}, encoder weights
`{job.weights}`: {how}. Inputs are {trained.data.in_channels}-channel images normalised as the
dataset spec says (`{spec.normalise}`), outputs logits over the classes
{", ".join(trained.data.classes)}.

## Data
- dataset: {spec.name} ({spec.modality}{", " + spec.material if spec.material else ""})
- provenance: {json.dumps(spec.metadata.get("provenance", spec.metadata), default=str)}
- split: {spec.split.method} (the test split was used once, for the metrics below)

## Metrics (macro IoU with bootstrap 95% CI over test images)
| split | images | macro IoU [95% CI] | foreground IoU | majority-class IoU |
|---|---|---|---|---|
{table}

Best validation IoU {_f(metrics.best_val_iou)} at epoch {metrics.best_epoch} (of the model, or the
ensemble's best fold model); trained
{metrics.epochs} epochs in {metrics.train_seconds or 0:.0f} s ({metrics.stopped_by}).

## Protocol (the run's profile)
```json
{json.dumps(profile.get("training", {}), indent=2)}
```
"""
    write_bytes(out / "README.md", card.encode("utf-8"))
    return out
