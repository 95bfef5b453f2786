"""Quality control on the real micrographs of ../shared/data (skipped when absent).

No trained model is needed here: the weight-free ``classical`` extractor with the default
Mahalanobis detector must tell nasa_super's training alloys from the other alloys
(different_test), from shale SEM and from XCT cement, while flagging at most 5% of nasa_super's
own test images, with the threshold fixed on its validation images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from matseg.datasets.check import inspect_dataset
from matseg.datasets.readers import match_channels
from matseg.datasets.spec import load_spec
from matseg.qc.detectors import make_detector
from matseg.qc.evaluation import acceptance_threshold, auroc
from matseg.qc.extractors import ExtractorContext, make_extractor
from matseg.qc.patches import Patches, cut_patches, image_scores

pytestmark = pytest.mark.realdata
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _images(shared: Path, name: str, splits: list[str] | None, limit: int | None = None) -> list:
    spec = load_spec(EXAMPLES / f"{name}.json")
    spec = spec.model_copy(update={"root": str(shared / Path(spec.root).name)})
    ins = inspect_dataset(spec)
    data = ins.dataset()
    seen: dict[str, np.ndarray] = {}
    for i in range(len(data)):
        sample = data[i]
        if splits is None or sample.meta.split in splits:
            seen.setdefault(sample.meta.key, match_channels(sample.image, 3))
    return list(seen.items())[:limit]


def test_classical_mahalanobis_flags_real_shifts(shared_data: Path) -> None:
    nasa = {s: _images(shared_data, "nasa-super", [s]) for s in ("train", "val", "test")}
    shifts = {
        "other alloys": _images(shared_data, "nasa-super", ["different_test"]),
        "shale SEM": _images(shared_data, "nrcan-shale-sem", None, limit=12),
        "XCT cement": [
            kv for kv in _images(shared_data, "xct-qim3d-unlabeled", None) if "cement" in kv[0]
        ][::4],
    }
    ext = make_extractor("classical", ExtractorContext())

    def embed(images: list, seed: int) -> tuple[Patches, dict[str, np.ndarray]]:
        patches = cut_patches(images, 128, 12, seed)
        return patches, {"classical": ext.embed(patches.arrays)}

    _, train = embed(nasa["train"], 0)
    _, val = embed(nasa["val"], 1)
    test_patches, test = embed(nasa["test"], 2)
    det = make_detector("mahalanobis").fit(train)
    threshold = acceptance_threshold(det.score_samples(val), 0.95)
    id_scores = det.score_samples(test)
    id_images = np.array(list(image_scores(test_patches, id_scores).values()))
    assert (id_images < threshold).mean() <= 0.05
    for name, images in shifts.items():
        assert images, name
        patches, emb = embed(images, 3)
        ood = det.score_samples(emb)
        assert auroc(id_scores, ood) >= 0.95, name
        flagged = np.array(list(image_scores(patches, ood).values())) < threshold
        assert flagged.mean() >= 0.5, name  # measured: 3 of 5 other alloys, all shale and cement
