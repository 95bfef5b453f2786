"""The counterfactual influence heatmap of the paper's interpreter, computed exactly and fast.

Given an image D, its prediction Z = M(D) and the expert's region of interest A:

    H[i, j] = || (Z * A) - (Z(i, j) * A) ||_1,     Z(i, j) = M(D with window (i, j) perturbed)

summed over classes and pixels. Windows of ``window`` px step by ``stride`` (stride 1: exact mode,
one window per pixel position). ``window_scores`` holds H per window position; ``image_map``
spreads it to image resolution, each pixel the mean over the windows that cover it (Captum's
Occlusion averages the same way, so with a constant-fill kernel the two maps agree up to sign).

Why it is written here and not taken from Captum: Captum's Occlusion re-runs the full model for
every window. This module keeps the result identical in fp32 and saves work four ways:

1. Reach: a window whose structural receptive field cannot touch A changes nothing inside A, so
   its H is exactly 0 and it is not run. The footprint is found with one forward pass of NaN
   impulses (NaN spreads through every weight a pixel touches, zeros included, so the footprint
   is a superset of the true influence: skipping is always safe).
2. Box-restricted forward passes (``restrict``, ``matseg.explain.region``): A is 0 outside its
   bounding box, so each layer is computed only where that box depends on it, in a traced graph
   with BatchNorm folded and bf16 weights cast once. fp32 output equals the full graph's; a
   model that cannot be traced runs whole.
3. Batches sized to the free memory in channels_last layout (oneDNN's fast path on CPU), and
   optionally bf16 (``precision="bf16-mixed"``, autocast's casts; fp32 is the default and the
   reference). The last batch is padded: one batch shape, one graph.
4. Optionally a compiled forward pass (``compile``): TorchInductor with frozen weights also
   fuses ReLU, residual adds and casts into the oneDNN kernels. Compiling costs about 19 s for
   ResNet50-UNet on 2 cores (less with Inductor's on-disk cache warm), so ``"auto"`` compiles
   only when there are enough windows to repay it.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from matseg.errors import InputError
from matseg.explain.kernels import perturbed_source
from matseg.explain.region import Box, BoxForward, RegionUnsupported
from matseg.training import pad_to_multiple, predict_logits

Target = Literal["probabilities", "mask"]
Compile = Literal["auto", "on", "off"]
Progress = Callable[[int, int], None]
# Measured on ResNet50-UNet at 256 px (benchmarks/explain_speed.py, 2 cores): 8 perturbed copies
# per forward was the fastest batch eager and compiled (activations stay in cache); 32 was 30%
# slower. Larger batches only add memory.
MAX_BATCH = 8
# "auto" compiles from this many windows on. Measured on ResNet50-UNet's box graph in bf16
# (benchmarks/explain_speed.py): compiling takes about 19 s on an empty Inductor cache and
# then saves about 7 ms per window over the eager box graph (BatchNorm is folded either way),
# so it repays itself from about 2600 windows.
COMPILE_FROM_WINDOWS = 4000


@dataclass
class Heatmap:
    """H per window and at image resolution, with how it was computed."""

    window_scores: np.ndarray  # (len(ys), len(xs)): H of the window at (ys[a], xs[b])
    ys: list[int]
    xs: list[int]
    image_map: np.ndarray  # (H, W)
    window: int
    stride: int
    kernel: str
    target: str
    precision: str
    evaluated: int  # windows run through the model
    skipped: int  # windows that cannot reach the region (H exactly 0)
    batch_size: int
    seconds: float
    footprint: tuple[int, int, int, int] = (0, 0, 0, 0)  # reach up, down, left, right (px)
    compiled: bool = False  # forward pass compiled by TorchInductor
    restricted: bool = False  # layers computed only where A's bounding box depends on them
    notes: list[str] = field(default_factory=list)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window starts along one axis: 0, stride, ... while the window fits (Captum's positions)."""
    if window > length:
        raise InputError(
            f"explain window: expected at most the image size {length}, found {window}"
        )
    return list(range(0, length - window + 1, stride))


class PredictionForward:
    """Batch (B, C, H, W) -> what H compares: class probabilities or one-hot hard masks.

    Only output ``box`` (rows y0:y1, columns x0:x1; None: the whole image) is returned. With
    ``restrict``, each batch shape gets a traced graph that computes every layer on just the
    part the box depends on, BatchNorm folded and weights cast once (``matseg.explain.region``);
    a model that cannot be traced, or whose graph does not reproduce the full one, runs whole,
    the reason in ``notes``. With ``compiled``, a forward that fails to compile falls back to
    eager on its first call, the reason in ``notes``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        precision: str,
        channels_last: bool,
        target: Target,
        compiled: bool = False,
        notes: list[str] | None = None,
        box: Box | None = None,
        restrict: bool = False,
    ) -> None:
        self.model, self.precision, self.channels_last = model, precision, channels_last
        self.target, self.notes, self.box = target, notes, box
        self.restrict, self.want_compiled = restrict and box is not None, compiled
        self.nets: dict[tuple[int, ...], _Net] = {}
        self.restricted = False  # a box-restricted graph ran

    @property
    def compiled(self) -> bool:
        return any(net.compiled for net in self.nets.values())

    def _note(self, text: str) -> None:
        if self.notes is not None and text not in self.notes:
            self.notes.append(text[:300])

    def _net(self, padded: torch.Tensor, h: int, w: int) -> _Net:
        key = tuple(padded.shape)
        if key not in self.nets:
            net: _Net | None = None
            if self.restrict:
                net = self._box_net(padded)
            if net is None:
                net = _WholeNet(self.model, self.precision, self.box or (0, h, 0, w), h, w)
            if self.want_compiled:
                net = net.compile()
            self.nets[key] = net
        return self.nets[key]

    def _box_net(self, padded: torch.Tensor) -> _Net | None:
        assert self.box is not None
        try:
            graph = BoxForward(self.model, padded, self.box, self.precision)
        except RegionUnsupported as exc:
            self._note(f"whole-image forward passes: {exc}")
            return None
        # fp32: the box graph gives the full graph's numbers bit for bit (measured); bf16 kernels
        # of other shapes round differently (0.4% of the largest logit measured)
        tolerance = 2e-2 if self.precision == "bf16-mixed" else 1e-4
        reference = graph.reference.float()
        error = float((graph.check.float() - reference).abs().max())
        if not error <= tolerance * float(reference.abs().max()) + 1e-6:
            self._note(
                f"whole-image forward passes: the box-restricted graph differs from the full "
                f"one by {error:.3g}"
            )
            return None
        self.restricted = True
        return _Net(graph.net)  # its bf16 casts are in the graph: no autocast around it

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        padded, h, w = pad_to_multiple(x)
        if self.channels_last:
            padded = padded.contiguous(memory_format=torch.channels_last)
        net = self._net(padded, h, w)
        try:
            logits = net(padded)
        except Exception as exc:  # any compile failure: the eager graph still gives the map
            if not net.compiled or net.proven:
                raise
            self._note(f"forward pass not compiled: {type(exc).__name__}: {exc}")
            net = self.nets[tuple(padded.shape)] = net.eager
            logits = net(padded)
        net.proven = True
        logits = logits.float()
        if self.target == "mask":
            k = logits.shape[1]
            return torch.nn.functional.one_hot(logits.argmax(1), k).permute(0, 3, 1, 2).float()
        return logits.softmax(dim=1)


class _Net:
    """A callable padded batch -> logits inside the box, eager or compiled by TorchInductor."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.run = module, module
        self.eager: _Net = self
        self.proven = False

    @property
    def compiled(self) -> bool:
        return self.eager is not self

    def compile(self) -> _Net:
        compiled = copy.copy(self)
        compiled.run = torch.compile(self.module, dynamic=False)
        compiled.eager, compiled.proven = self, False
        return compiled

    def __call__(self, padded: torch.Tensor) -> torch.Tensor:
        with (
            torch.no_grad(),
            # weights as constants: BatchNorm folds into the convolutions (inference only)
            _inductor_freezing() if self.compiled else contextlib.nullcontext(),
        ):
            return self.run(padded)


class _WholeNet(_Net):
    """The model itself on the whole image (autocast for bf16), cropped to the box."""

    def __init__(self, model: torch.nn.Module, precision: str, box: Box, h: int, w: int) -> None:
        super().__init__(model)
        self.bf16, self.box, self.h, self.w = precision == "bf16-mixed", box, h, w

    def __call__(self, padded: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = super().__call__(padded)[..., : self.h, : self.w]
        y0, y1, x0, x1 = self.box
        return logits[..., y0:y1, x0:x1]


def _inductor_freezing() -> contextlib.AbstractContextManager[None]:
    from torch._inductor import config

    return config.patch(freezing=True)  # type: ignore[no-any-return]


def can_compile() -> str | None:
    """Why the forward pass cannot be compiled here (None: it can)."""
    if sys.platform == "win32":
        return "torch.compile on Windows needs a Visual C++ toolchain matseg does not check for"
    compiler = os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")
    if not shutil.which(compiler):
        return "no C++ compiler found for TorchInductor (install g++ or set CXX)"
    return None


def influence_footprint(
    model: torch.nn.Module, image_shape: tuple[int, int, int], channels_last: bool = False
) -> tuple[int, int, int, int]:
    """How far (up, down, left, right, in px) one input pixel can change the output.

    NaN impulses at four neighbouring central pixels (stride-2 layers make the footprint depend
    on the parity of the position) in one fp32 forward pass; the NaN region of each output gives
    the extent. A superset of the true influence, so windows beyond it can be skipped exactly.
    """
    c, h, w = image_shape
    cy, cx = h // 2, w // 2
    offsets = [(0, 0), (0, 1), (1, 0), (1, 1)]
    x = torch.zeros(len(offsets), c, h, w)
    for n, (dy, dx) in enumerate(offsets):
        x[n, :, min(cy + dy, h - 1), min(cx + dx, w - 1)] = float("nan")
    with torch.no_grad():
        out = predict_logits(model, x, channels_last).float()
    up = down = left = right = 0
    for n, (dy, dx) in enumerate(offsets):
        rows, cols = np.nonzero(torch.isnan(out[n]).any(dim=0).numpy())
        if rows.size == 0:
            continue
        py, px = min(cy + dy, h - 1), min(cx + dx, w - 1)
        up, down = max(up, py - rows.min()), max(down, rows.max() - py)
        left, right = max(left, px - cols.min()), max(right, cols.max() - px)
    return int(up), int(down), int(left), int(right)


def _reaching(
    roi: np.ndarray, ys: list[int], xs: list[int], window: int, footprint: tuple[int, ...]
) -> np.ndarray:
    """(len(ys), len(xs)) bool: can the window at (y, x) change any pixel of the region?"""
    up, down, left, right = footprint
    h, w = roi.shape
    # output rows a window [y, y + window) can touch: [y - up, y + window - 1 + down]
    if not roi.any():
        return np.zeros((len(ys), len(xs)), dtype=bool)
    reach = np.zeros((len(ys), len(xs)), dtype=bool)
    # integral image of the region, for "any region pixel in this rectangle"
    integral = np.pad(roi.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    for a, y in enumerate(ys):
        y0, y1 = max(y - up, 0), min(y + window + down, h)
        for b, x in enumerate(xs):
            x0, x1 = max(x - left, 0), min(x + window + right, w)
            total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
            reach[a, b] = total > 0
    return reach


def auto_batch_size(
    model: torch.nn.Module, image_shape: tuple[int, int, int], limit: int = MAX_BATCH
) -> int:
    """Perturbed copies per forward pass that fit in a quarter of the free memory.

    The per-sample cost is the sum of every module's output size for one image (an upper bound
    on what a no-grad forward holds at once), measured with forward hooks.
    """
    sizes: list[int] = []

    def hook(_m: torch.nn.Module, _i: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            sizes.append(out.numel() * out.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            predict_logits(model, torch.zeros(1, *image_shape), False)
    finally:
        for handle in handles:
            handle.remove()
    per_sample = max(sum(sizes), 1)
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        free = 4 * 2**30
    return int(max(1, min(limit, free // 4 // per_sample)))


def bounding_box(roi: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.flatnonzero(roi.any(axis=1)), np.flatnonzero(roi.any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def counterfactual_heatmap(
    model: torch.nn.Module,
    image: np.ndarray,
    roi: np.ndarray | None = None,
    kernel: str = "blur",
    window: int = 16,
    stride: int = 8,
    target: Target = "probabilities",
    precision: str = "32",
    channels_last: bool | None = None,
    batch_size: int | None = None,
    use_reach: bool = True,
    seed: int = 0,
    progress: Progress | None = None,
    compile: Compile = "auto",
    restrict: bool = True,
) -> Heatmap:
    """H for every window position of ``image`` (C, H, W, normalised) inside region ``roi``.

    ``roi`` is a (H, W) boolean mask (None: the whole image). ``target``: compare class
    probabilities (default) or hard one-hot masks. ``compile``: "on", "off" or "auto" (on from
    ``COMPILE_FROM_WINDOWS`` windows, when a C++ compiler is there). ``restrict``: compute
    each layer only where A's bounding box depends on it (False: the model on the whole image).
    """
    start = time.perf_counter()
    if image.ndim != 3:
        raise InputError(f"explain image: expected (C, H, W), found shape {image.shape}")
    c, h, w = image.shape
    if window < 1 or stride < 1:
        raise InputError(f"explain: expected window and stride >= 1, found {window}, {stride}")
    region = np.ones((h, w), dtype=bool) if roi is None else np.asarray(roi, dtype=bool)
    if region.shape != (h, w):
        raise InputError(f"explain roi: expected the image's size {(h, w)}, found {region.shape}")
    if not region.any():
        raise InputError("explain roi: expected at least one pixel in the region, found none")
    model.eval()
    # channels_last pays on CPU in fp32 too (oneDNN's NHWC convolutions: 1.5x measured for
    # ResNet50-UNet here); results stay equal to the contiguous computation within float noise.
    channels_last = True if channels_last is None else channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    by, bx = bounding_box(region)
    area = torch.from_numpy(region[by, bx].astype(np.float32))
    ys, xs = window_starts(h, window, stride), window_starts(w, window, stride)
    footprint = (h, h, w, w)
    reach = np.ones((len(ys), len(xs)), dtype=bool)
    if use_reach and not region.all():
        footprint = influence_footprint(model, (c, h, w), channels_last)
        reach = _reaching(region, ys, xs, window, footprint)
    todo = [(a, b) for a in range(len(ys)) for b in range(len(xs)) if reach[a, b]]
    batch = min(batch_size or auto_batch_size(model, (c, h, w)), max(len(todo), 1))
    notes: list[str] = []
    compiled = _decide_compile(compile, len(todo), notes)
    box = (by.start, by.stop, bx.start, bx.stop)
    forward = PredictionForward(
        model, precision, channels_last, target, compiled, notes, box, restrict
    )
    one_shape = compiled or restrict  # each batch shape is one graph to trace or compile
    # The unperturbed prediction, computed in a batch of the same size as the perturbed ones:
    # low-precision kernels may round differently for another batch size, and in bf16 that
    # rounding noise, summed over A, would swamp the real changes.
    cleans: dict[int, torch.Tensor] = {}

    def clean_for(n: int) -> torch.Tensor:
        if n not in cleans:
            cleans[n] = forward(x.repeat(n, 1, 1, 1))[:1] * area
        return cleans[n]

    source = torch.from_numpy(perturbed_source(image, kernel, window, seed))
    scores = np.zeros((len(ys), len(xs)), dtype=np.float64)
    for first in range(0, len(todo), batch):
        chunk = todo[first : first + batch]
        # the last batch is padded with clean copies: one batch size, one graph
        perturbed = x.repeat(batch if one_shape else len(chunk), 1, 1, 1)
        for n, (a, b) in enumerate(chunk):
            ya, xb = ys[a], xs[b]
            perturbed[n, :, ya : ya + window, xb : xb + window] = source[
                :, ya : ya + window, xb : xb + window
            ]
        out = forward(perturbed)[: len(chunk)] * area
        clean = clean_for(len(perturbed))
        diff = (out - clean).abs().sum(dim=(1, 2, 3)).double().numpy()
        for n, (a, b) in enumerate(chunk):
            scores[a, b] = diff[n]
        if progress is not None:
            progress(min(first + batch, len(todo)), len(todo))
    model.to(memory_format=torch.contiguous_format)
    return Heatmap(
        window_scores=scores,
        ys=ys,
        xs=xs,
        image_map=spread(scores, ys, xs, window, (h, w)),
        window=window,
        stride=stride,
        kernel=kernel,
        target=target,
        precision=precision,
        evaluated=len(todo),
        skipped=len(ys) * len(xs) - len(todo),
        batch_size=batch,
        seconds=time.perf_counter() - start,
        footprint=footprint,
        compiled=forward.compiled,
        restricted=forward.restricted,
        notes=notes,
    )


def _decide_compile(compile: Compile, windows: int, notes: list[str]) -> bool:
    """Whether to compile the forward pass; why not goes into ``notes`` when asked for."""
    if compile not in ("auto", "on", "off"):
        raise InputError(f"explain compile: expected auto, on or off, found {compile!r}")
    if compile == "off" or (compile == "auto" and windows < COMPILE_FROM_WINDOWS):
        return False
    reason = can_compile()
    if reason is not None:
        notes.append(f"forward pass not compiled: {reason}")
        return False
    return True


def spread(
    scores: np.ndarray, ys: list[int], xs: list[int], window: int, shape: tuple[int, int]
) -> np.ndarray:
    """Per-window scores -> (H, W): each pixel the mean over the windows covering it (0 if none)."""
    total = np.zeros(shape, dtype=np.float64)
    count = np.zeros(shape, dtype=np.float64)
    for a, y in enumerate(ys):
        for b, x in enumerate(xs):
            total[y : y + window, x : x + window] += scores[a, b]
            count[y : y + window, x : x + window] += 1
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)
