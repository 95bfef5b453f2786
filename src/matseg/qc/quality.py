"""Typicality quality control as one estimator: is this micrograph like the training images?

:class:`TypicalityQC` fits on images (arrays, (key, array) pairs or a dataset split) in a
notebook, with no run folder: patches -> embeddings (per extractor) -> detectors fitted on the
training patches -> a flag threshold fixed on validation patches (``accept`` of them accepted)
-> per-image typicality and ATYPICAL / ok. The run-folder workflow
(:mod:`matseg.qc.workflow`) is a thin layer over it that saves and reloads its state.

    qc = TypicalityQC(extractors=["classical"]).fit(train_images, val_images)
    qc.score_samples(new_images)    # typicality per image (higher = more typical)
    qc.predict(new_images)          # +1 typical, -1 atypical (scikit-learn's outlier convention)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from matseg.datasets.readers import match_channels
from matseg.errors import InputError
from matseg.profile import QualityControl
from matseg.qc.detectors import Embeddings, make_detector
from matseg.qc.evaluation import acceptance_threshold
from matseg.qc.extractors import ExtractorContext, make_extractor
from matseg.qc.patches import Patches, as_images, cut_patches, image_scores

# Seeds of the patch sampling (offsets from ``seed``): each set of patches its own draw.
TRAIN, VAL, TEST, NEW = 0, 1, 2, 100


@dataclass
class Scored:
    """Scores of a set of patches by every detector, with the images they belong to."""

    patches: Patches
    scores: dict[str, np.ndarray]


class TypicalityQC:
    """Patch typicality of micrographs against a training set, with a fixed flag threshold.

    Parameters are stored as given (scikit-learn's convention); fitted state ends in ``_``.
    ``detector`` decides the flags; ``compare`` detectors are fitted and scored beside it.
    ``model``: the trained network, for the ``encoder`` extractor.
    """

    def __init__(
        self,
        extractors: Sequence[str] = ("classical",),
        detector: str = "mahalanobis",
        compare: Sequence[str] = (),
        patch_size: int = 128,
        max_patches_per_image: int = 64,
        accept: float = 0.95,
        k: int = 5,
        seed: int = 0,
        model: Any = None,
        weights: dict[str, str] | None = None,
    ) -> None:
        self.extractors = extractors
        self.detector = detector
        self.compare = compare
        self.patch_size = patch_size
        self.max_patches_per_image = max_patches_per_image
        self.accept = accept
        self.k = k
        self.seed = seed
        self.model = model
        self.weights = weights

    @classmethod
    def from_settings(cls, settings: QualityControl, model: Any = None) -> TypicalityQC:
        """The estimator a profile's ``qc`` block describes."""
        return cls(
            extractors=list(settings.extractors), detector=settings.detector,
            compare=list(settings.compare), patch_size=settings.patch_size,
            max_patches_per_image=settings.max_patches_per_image, accept=settings.accept,
            k=settings.k, seed=settings.seed, model=model, weights=dict(settings.weights),
        )  # fmt: skip

    @property
    def detector_names(self) -> list[str]:
        """The deciding detector first, then the compared ones (each once)."""
        return list(dict.fromkeys([self.detector, *self.compare]))

    # --- patches and embeddings ---------------------------------------------------------------

    def patches(self, images: Any, offset: int) -> Patches:
        """The patches of ``images`` (any form :func:`as_images` takes), drawn with a seed."""
        pairs = as_images(images)
        if hasattr(self, "in_channels_"):
            pairs = [(key, match_channels(im, self.in_channels_, "quality control"))
                     for key, im in pairs]  # fmt: skip
        return cut_patches(pairs, self.patch_size, self.max_patches_per_image, self.seed + offset)

    def embed(self, patches: Patches) -> Embeddings:
        """Every extractor's embedding of the patches (rows aligned)."""
        ctx = ExtractorContext(model=self.model, weights=dict(self.weights or {}))
        return {name: make_extractor(name, ctx).embed(patches.arrays) for name in self.extractors}

    # --- fitting -------------------------------------------------------------------------------

    def fit(self, train: Any, val: Any = None) -> TypicalityQC:
        """Fit the detectors on ``train``'s patches and fix thresholds on ``val``'s (without
        ``val``, on the training patches themselves: an optimistic threshold)."""
        train_patches = self.patches(train, TRAIN)
        self.in_channels_ = int(train_patches.arrays.shape[1])
        train_emb = self.embed(train_patches)
        val_emb = self.embed(self.patches(val, VAL)) if val is not None else train_emb
        return self.fit_embeddings(train_emb, val_emb, self.in_channels_)

    def fit_embeddings(
        self, train: Embeddings, val: Embeddings, in_channels: int | None = None
    ) -> TypicalityQC:
        """Fit from embeddings already computed (a saved state refits exactly like this)."""
        missing = [e for e in self.extractors if e not in train or e not in val]
        if missing:
            raise InputError(f"quality control: expected embeddings of {missing}, found none")
        if in_channels is not None:
            self.in_channels_ = in_channels
        self.train_embeddings_ = {e: train[e] for e in self.extractors}
        self.val_embeddings_ = {e: val[e] for e in self.extractors}
        self.detectors_, self.skipped_ = {}, {}
        for name in self.detector_names:
            try:
                detector = make_detector(name, seed=self.seed, k=self.k)
                self.detectors_[name] = detector.fit(self.train_embeddings_)
            except (ValueError, np.linalg.LinAlgError) as exc:  # InputError is a ValueError
                n = len(next(iter(self.train_embeddings_.values())))
                reason = f"cannot be fitted on {n} training patches ({exc})"
                if name == self.detector:
                    raise InputError(
                        f"quality control: detector {name} {reason}; give it more training "
                        "images (or larger qc.max_patches_per_image), or choose qc.detector knn"
                    ) from None
                self.skipped_[name] = reason  # a compared detector: noted, the chosen one runs
        self.thresholds_ = {
            name: acceptance_threshold(det.score_samples(self.val_embeddings_), self.accept)
            for name, det in self.detectors_.items()
        }
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "detectors_"):
            raise InputError("TypicalityQC: expected a fitted estimator, found none; call fit")

    # --- scoring -------------------------------------------------------------------------------

    def score_patches(self, images: Any, offset: int = NEW) -> Scored:
        """Every detector's scores of the patches of ``images``, drawn together."""
        self._check_fitted()
        patches = self.patches(images, offset)
        emb = self.embed(patches)
        return Scored(patches, {n: d.score_samples(emb) for n, d in self.detectors_.items()})

    def image_rows(self, scored: Scored, scenario: str) -> list[dict[str, Any]]:
        """One row per image: its typicality (deciding detector), flag and flagged patches."""
        name = self.detector
        threshold = self.thresholds_[name]
        flags: dict[str, list[bool]] = {}
        for owner, s in zip(scored.patches.owners, scored.scores[name], strict=True):
            flags.setdefault(owner, []).append(bool(s < threshold))
        return [
            {
                "scenario": scenario,
                "image": key,
                "score": round(value, 6),
                "flagged": value < threshold,
                "patches": len(flags[key]),
                "patches_flagged": sum(flags[key]),
                "detector": name,
                "threshold": round(threshold, 6),
            }
            for key, value in image_scores(scored.patches, scored.scores[name]).items()
        ]

    def verdicts(self, images: Any, scenario: str = "new") -> list[dict[str, Any]]:
        """Per image: typicality and flag, each image scored on its own (streaming: a score
        never depends on what else is scored with it)."""
        rows = []
        for key, image in as_images(images):
            rows.extend(self.image_rows(self.score_patches([(key, image)]), scenario))
        return rows

    def score_samples(self, images: Any) -> np.ndarray:
        """Typicality per image (median patch score of the deciding detector; higher = more
        like the training images)."""
        out = []
        for key, image in as_images(images):
            scored = self.score_patches([(key, image)])
            out.append(image_scores(scored.patches, scored.scores[self.detector])[key])
        return np.array(out)

    def decision_function(self, images: Any) -> np.ndarray:
        """Typicality minus the threshold: negative means flagged."""
        return self.score_samples(images) - self.thresholds_[self.detector]

    def predict(self, images: Any) -> np.ndarray:
        """+1 for a typical image, -1 for a flagged one (scikit-learn's outlier convention)."""
        return np.where(self.decision_function(images) >= 0, 1, -1)
