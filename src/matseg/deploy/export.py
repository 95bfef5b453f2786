"""Export a job's model: ONNX (checked against PyTorch with onnxruntime) and a model folder that
segmentation-models-pytorch's ``from_pretrained`` reads (config.json + model.safetensors), with a
model card (profile, data provenance, metrics with CIs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matseg.atomic import write_bytes
from matseg.errors import ModelError
from matseg.execution.job import METRICS_FILE
from matseg.execution.trained import TrainedJob


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
    size = size or trained.job.training.get("patch_size") or 256
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


def _metrics_card(run: Path, trained: TrainedJob) -> tuple[str, dict[str, Any]]:
    metrics = json.loads((run / "jobs" / trained.job.hash / METRICS_FILE).read_text())
    rows = []
    for split, ev in metrics["evaluations"].items():
        s = ev["scores"]
        lo, hi = (s.get("ci") or {}).get("macro_iou") or (None, None)
        ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
        major = ev.get("baselines", {}).get("majority class", {}).get("macro_iou")
        rows.append(
            f"| {split} | {ev['n_images']} | {s['macro_iou']:.3f}{ci} | "
            f"{'–' if s.get('foreground_iou') is None else format(s['foreground_iou'], '.3f')} | "
            f"{'–' if major is None else format(major, '.3f')} |"
        )
    return "\n".join(rows), metrics


def export_package(trained: TrainedJob, out: Path) -> Path:
    """``out/`` with config.json + model.safetensors (smp ``from_pretrained``) and README.md."""
    job, spec = trained.job, trained.data.inspection.spec
    model = trained.model.eval()
    if not hasattr(model, "save_pretrained"):
        raise ModelError(job.label(), "a segmentation-models-pytorch model", type(model).__name__)
    model.save_pretrained(str(out))
    table, metrics = _metrics_card(trained.run, trained)
    profile = json.loads((trained.run / "profile.json").read_text())
    card = f"""---
library_name: segmentation-models-pytorch
tags: [semantic-segmentation, materials-science, matseg]
---
# {job.encoder} + {job.decoder} for {job.dataset}

Trained by matseg (job `{job.hash}`, run `{trained.run.name}`), seed {job.seed}, encoder weights
`{job.weights}`. Load it with `segmentation_models_pytorch.from_pretrained("<this folder>")`; inputs
are {trained.data.in_channels}-channel images normalised as the dataset spec says
(`{spec.normalise}`), outputs logits over the classes {", ".join(trained.data.classes)}.

## Data
- dataset: {spec.name} ({spec.modality}{", " + spec.material if spec.material else ""})
- provenance: {json.dumps(spec.metadata.get("provenance", spec.metadata), default=str)}
- split: {spec.split.method} (the test split was used once, for the metrics below)

## Metrics (macro IoU with bootstrap 95% CI over test images)
| split | images | macro IoU [95% CI] | foreground IoU | majority-class IoU |
|---|---|---|---|---|
{table}

Best validation IoU {metrics["best_val_iou"]:.3f} at epoch {metrics["best_epoch"]}; trained
{metrics["epochs"]} epochs in {metrics["train_seconds"]:.0f} s ({metrics["stopped_by"]}).

## Protocol (the run's profile)
```json
{json.dumps(profile.get("training", {}), indent=2)}
```
"""
    write_bytes(out / "README.md", card.encode("utf-8"))
    return out
