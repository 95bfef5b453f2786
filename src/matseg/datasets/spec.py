"""The dataset spec: a small JSON file that says where the micrographs are and how to read them.

A spec is data, not code (the nnU-Net idea): a materials scientist describes a folder of images
and masks, the mask encoding, the classes and the imaging context, and matseg reads it with no
Python written. Paths inside a spec are relative to the spec file's folder.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from matseg.errors import SpecError, read_json
from matseg.fields import SAFE_NAME, UserModel, first_problem


class Modality(StrEnum):
    """Imaging modality; it travels with every sample and later conditions recommendations."""

    SEM = "SEM"
    AFM = "AFM"
    XCT = "XCT"
    OPTICAL = "Optical"
    OTHER = "other"


class _Strict(UserModel):
    """Unknown keys are errors: a typo in a spec must never be silently ignored; numbers are
    finite and never booleans."""


# --- mask encodings -----------------------------------------------------------------------------


class IndexEncoding(_Strict):
    """Mask pixels are class ids, optionally via a value -> class table (e.g. {0: 0, 255: 1})."""

    type: Literal["index"] = "index"
    values: dict[int, int] | None = None
    ignore_values: list[int] = Field(default_factory=list)


class ColourClass(_Strict):
    """One colour of an overlay mask and the class it stands for (8-bit RGB)."""

    rgb: tuple[int, int, int]
    class_id: int = Field(ge=0)


class ColourEncoding(_Strict):
    """Colour overlays: listed colours map to classes, every other pixel is ``default_class``.

    16-bit overlays are compared after scaling to 8 bits (65535 -> 255), so one table serves both.
    """

    type: Literal["colour"] = "colour"
    colours: list[ColourClass] = Field(min_length=1)
    default_class: int = Field(default=0, ge=0)
    tolerance: int = Field(default=0, ge=0, le=255)


class ThresholdEncoding(_Strict):
    """Binary masks from a grey threshold; ``polarity`` says whether the foreground is bright."""

    type: Literal["threshold"] = "threshold"
    threshold: float = 128
    polarity: Literal["bright", "dark"] = "bright"


class InstanceEncoding(_Strict):
    """Instance-id images (0 = background) turned into binary, boundary or semantic masks."""

    type: Literal["instance"] = "instance"
    to: Literal["binary", "boundary", "semantic"] = "binary"
    background: int = 0
    instance_classes: dict[int, int] | None = None

    @model_validator(mode="after")
    def _semantic_needs_table(self) -> InstanceEncoding:
        if self.to == "semantic" and not self.instance_classes:
            raise ValueError(
                "to='semantic' needs instance_classes, a table instance id -> class id"
            )
        return self


class CocoEncoding(_Strict):
    """COCO JSON polygons rasterised per image; image files are matched by base name."""

    type: Literal["coco"] = "coco"
    annotations: list[str] = Field(min_length=1)
    categories: dict[int, int] | None = None  # COCO category id -> class id; default: all -> 1


class ViaSource(_Strict):
    """One VIA 2.x JSON project and the class its polygons draw."""

    file: str
    class_id: int = Field(ge=1)


class ViaEncoding(_Strict):
    """VGG Image Annotator (VIA 2.x) polygons rasterised; later sources paint over earlier ones."""

    type: Literal["via"] = "via"
    sources: list[ViaSource] = Field(min_length=1)


MaskEncoding = Annotated[
    IndexEncoding
    | ColourEncoding
    | ThresholdEncoding
    | InstanceEncoding
    | CocoEncoding
    | ViaEncoding,
    Field(discriminator="type"),
]

POLYGON_ENCODINGS = ("coco", "via")


# --- reading, cropping, splitting, tiling -------------------------------------------------------


class Pairing(_Strict):
    """How a mask file is found for an image: same stem, plus a suffix or stem replacements."""

    mask_suffix: str = ""
    stem_replace: list[tuple[str, str]] = Field(default_factory=list)


class Crop(_Strict):
    """Pixels cut from each side before use, e.g. the info band under an SEM image.

    ``auto_info_band`` finds a band of flat or text rows at the bottom (the SEM data bar) and
    cuts it; the cut is reported per image so nothing is removed silently.
    """

    top: int = Field(default=0, ge=0)
    bottom: int = Field(default=0, ge=0)
    left: int = Field(default=0, ge=0)
    right: int = Field(default=0, ge=0)
    auto_info_band: bool = False


class Reader(_Strict):
    """What an image file holds: a 2D image, a multi-channel stack, a volume or frames.

    - ``image``: one 2D image (grey, RGB, RGBA; 8/16-bit or float).
    - ``stack``: channels in pages / first axis (AFM height, phase, amplitude); ``channels`` names
      them and selects a subset.
    - ``volume``: a 3D stack (XCT); read as 2D slices along ``axis``.
    - ``frames``: each entry of ``images`` is a folder of frames forming one sequence.
    - ``afm``: instrument files (.spm, .jpk, .ibw, .gwy) through AFMReader (extra ``matseg[afm]``).
    """

    kind: Literal["image", "stack", "volume", "frames", "afm"] = "image"
    axis: int = Field(default=0, ge=0, le=2)
    channels: list[str] | None = None
    slice_step: int = Field(default=1, ge=1)


class Split(_Strict):
    """Train / val / test assignment: seeded and group-aware, or from a manifest or folders.

    ``group_pattern`` is a regular expression applied to the file stem; its first group (or the
    whole match) names the micrograph a file comes from, so tiles of one micrograph stay together.
    Manifests are JSON ``{split: [names]}``, JSON records (``name_field`` / ``split_field``, a
    string or a list; ``prefer`` picks among prefixed values such as ``Super1/train``) or CSV with
    ``name,split`` columns. Split names other than train / val / test become shift sets.
    """

    method: Literal["random", "manifest", "folders"] = "random"
    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    group_pattern: str | None = None
    manifest: str | None = None
    name_field: str = "name"
    split_field: str = "split"
    prefer: list[str] = Field(default_factory=list)

    @field_validator("ratios")
    @classmethod
    def _ratios_sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(r < 0 for r in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"ratios must be three non-negative numbers summing to 1, got {v}")
        return v

    @model_validator(mode="after")
    def _manifest_present(self) -> Split:
        if self.method == "manifest" and not self.manifest:
            raise ValueError("method='manifest' needs a 'manifest' path")
        return self


class Tiling(_Strict):
    """Cut large images into patches (with overlap) after an explicit resize policy.

    ``resize``: ``none`` keeps pixels as they are (recommended: pixel size is physics), ``fit``
    scales the longer side to ``fit_size``, ``scale`` multiplies both sides by ``scale``.
    """

    patch_size: int | None = Field(default=None, ge=8)
    overlap: int = Field(default=0, ge=0)
    resize: Literal["none", "fit", "scale"] = "none"
    fit_size: int | None = Field(default=None, ge=8)
    scale: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> Tiling:
        if self.patch_size is not None and self.overlap >= self.patch_size:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than patch_size")
        if self.resize == "fit" and self.fit_size is None:
            raise ValueError("resize='fit' needs fit_size")
        return self


Normalise = Literal["auto", "dtype", "minmax", "percentile", "zscore"]


class DatasetSpec(_Strict):
    """A dataset described as data: where, how to read, what the classes mean, the context."""

    name: str = Field(
        pattern=SAFE_NAME,
        description="names the dataset in tables and its cache folder: letters, digits, "
        "'_', '.', '-', not starting with '.' or '-' (never a path)",
    )
    root: str = "."
    images: str = "images"
    masks: str | None = "masks"
    pairing: Pairing = Field(default_factory=Pairing)
    encoding: MaskEncoding | None = None
    classes: list[str] | None = None
    ignore_index: int = 255
    modality: Modality = Modality.OTHER
    material: str = ""
    pixel_size_um: float | None = Field(default=None, gt=0)
    metadata: dict[str, Any] = Field(default_factory=dict)
    reader: Reader = Field(default_factory=Reader)
    crop: Crop = Field(default_factory=Crop)
    normalise: Normalise = "auto"
    split: Split = Field(default_factory=Split)
    tiling: Tiling = Field(default_factory=Tiling)

    # Set by load_spec: the folder that relative paths are resolved against (not part of the JSON).
    _base_dir: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _polygon_encodings_need_no_mask_folder(self) -> DatasetSpec:
        if self.encoding is not None and self.encoding.type in POLYGON_ENCODINGS:
            self.masks = None
        return self

    def root_path(self) -> Path:
        """The dataset root as an absolute path (relative roots are taken from the spec folder)."""
        root = Path(self.root).expanduser()
        if not root.is_absolute():
            root = (self._base_dir or Path.cwd()) / root
        return root.resolve()

    def resolve(self, relative: str) -> Path:
        """A path named inside the spec, resolved against the dataset root."""
        path = Path(relative).expanduser()
        return path if path.is_absolute() else self.root_path() / path


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def spec_from_dict(
    data: dict[str, Any], where: str = "spec", base_dir: Path | None = None
) -> DatasetSpec:
    """Validate a spec mapping; the first error becomes one readable line naming the field."""
    try:
        spec = DatasetSpec.model_validate(data)
    except ValidationError as exc:
        field, expected, found = first_problem(exc, width=80)
        hint = "see examples/*.json or docs/dataset-spec.md"
        raise SpecError(f"{where}: field '{field}'", expected, found, hint) from None
    spec._base_dir = base_dir
    return spec


def load_spec(path: Path | str) -> DatasetSpec:
    """Read and validate a dataset spec JSON file."""
    path = Path(path)
    data = read_json(path, "a dataset spec JSON file", SpecError)
    if not isinstance(data, dict):
        raise SpecError(str(path), "a JSON object", type(data).__name__, "a spec is {...}")
    return spec_from_dict(data, where=str(path), base_dir=path.resolve().parent)


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema of a dataset spec (committed as docs/dataset-spec.schema.json)."""
    return DatasetSpec.model_json_schema()
