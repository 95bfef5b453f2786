"""TypicalityQC in a notebook: fit on arrays or a dataset, score images, no run folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from matseg.datasets.load import load_dataset
from matseg.datasets.synthetic import generate, write_synthetic_dataset
from matseg.errors import InputError
from matseg.qc.quality import TypicalityQC


def _images(kind: str, n: int, seed: int) -> list[np.ndarray]:
    return [generate(kind, size=64, seed=seed + i)[0][None].astype(np.float32) for i in range(n)]


def test_fits_on_arrays_and_flags_another_microstructure() -> None:
    qc = TypicalityQC(extractors=["classical"], detector="mahalanobis", compare=["knn"],
                      patch_size=32, seed=0)  # fmt: skip
    qc.fit(_images("pores", 12, 0), _images("pores", 6, 50))
    assert set(qc.thresholds_) == {"mahalanobis", "knn"} and qc.in_channels_ == 1
    same = _images("pores", 6, 200)
    other = _images("grains", 6, 300)
    assert (qc.predict(other) == -1).mean() >= 5 / 6
    assert (qc.predict(same) == 1).mean() >= 4 / 6
    scores = qc.score_samples(other)
    np.testing.assert_allclose(qc.decision_function(other), scores - qc.thresholds_["mahalanobis"])
    # streaming: an image's score does not depend on what else is scored with it
    assert qc.score_samples(other[:1])[0] == pytest.approx(scores[0])
    rows = qc.verdicts([("grain-0", other[0][0])])  # (H, W) arrays are one-channel images
    assert rows[0]["image"] == "grain-0" and rows[0]["flagged"] == (
        scores[0] < rows[0]["threshold"]
    )


def test_fits_on_a_dataset_split_and_refits_from_embeddings_exactly(tmp_path: Path) -> None:
    data = load_dataset(write_synthetic_dataset(tmp_path, kind="particles", n_images=16, size=64))
    qc = TypicalityQC(extractors=["classical"], detector="knn", patch_size=32)
    qc.fit(data.split("train"), data.split("val"))
    again = TypicalityQC(extractors=["classical"], detector="knn", patch_size=32)
    again.fit_embeddings(qc.train_embeddings_, qc.val_embeddings_, qc.in_channels_)
    test = data.split("test")
    np.testing.assert_array_equal(qc.score_samples(test), again.score_samples(test))
    assert qc.thresholds_ == again.thresholds_


def test_unfitted_and_mismatched_use_is_one_line() -> None:
    with pytest.raises(InputError, match="call fit"):
        TypicalityQC().score_samples(_images("pores", 1, 0))
    with pytest.raises(InputError, match="embeddings of"):
        TypicalityQC(extractors=["classical"]).fit_embeddings({}, {})
