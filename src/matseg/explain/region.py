"""Exact forward passes that compute only the part of every layer a box of the output needs.

The heatmap compares predictions inside the expert's region A only, yet a segmentation network
computes every output pixel. Each convolution needs only a bounded window of the layer before it,
so the output pixels in A's bounding box depend on a box of every feature map, often much smaller
than the map (the decoder's high-resolution stages above all). ``box_forward`` traces the model
into its ATen operations (``make_fx``, shapes fixed, mutations removed), walks the graph backwards
to find the box each operation's consumers need, and writes a new graph that computes every
operation on that box only: the slice of its input it reads, zero padding (-inf for max pooling)
where the slice crosses the map's border in place of the layer's own padding, and the operation
without padding. Its output equals the full forward pass cropped to the box, up to the float
rounding of differently shaped kernels.

An operation whose output pixel depends on the whole map (the global pooling of
squeeze-excitation or ASPP, group norm, anything not listed here) is computed whole, which is
always exact; the saving resumes after it. Resampling that is not a whole-number zoom
(``align_corners=True`` bilinear, odd sizes) reads the slice it needs put back into a zero map
of full size, so its interpolation weights stay those of the full map.

Eval-mode BatchNorm is folded into the convolution before it, and every weight-only computation
(autocast's bf16 weight casts among them) is done once at construction.

Why this is written here: torch.fx gives the graph, but no library computes a network's
dependency boxes and rewrites the graph to them (TorchInductor and ONNX Runtime optimise whole
tensors only).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import Graph, GraphModule, Node

aten = torch.ops.aten
Box = tuple[int, int, int, int]  # rows [y0, y1), columns [x0, x1), in one feature map's pixels
Span = tuple[int, int]

# Operations that act on each pixel alone (per-channel constants broadcast over the map).
POINTWISE = {
    aten.relu.default, aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor,
    aten.sigmoid.default, aten.silu.default, aten.hardswish.default, aten.hardsigmoid.default,
    aten.hardtanh.default, aten.gelu.default, aten.leaky_relu.default, aten.elu.default,
    aten.tanh.default, aten.mish.default, aten.softplus.default, aten.neg.default,
    aten.exp.default, aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default,
    aten.clone.default, aten._to_copy.default, aten.alias.default, aten.where.self,
    aten.native_batch_norm.default, aten._native_batch_norm_legit_no_training.default,
    aten.add.Scalar, aten.mul.Scalar, aten.sub.Scalar, aten.div.Scalar, aten.pow.Tensor_Scalar,
    aten.sqrt.default, aten.rsqrt.default, aten.abs.default, aten.prelu.default,
    aten.softmax.int, aten._softmax.default, aten.log_softmax.int, aten._log_softmax.default,
}  # fmt: skip
REDUCTIONS = {aten.mean.dim, aten.sum.dim_IntList, aten.amax.default}
BATCH_NORMS = {aten.native_batch_norm.default, aten._native_batch_norm_legit_no_training.default}
# Operations whose result does not depend on the image, though they take none of its tensors.
CREATORS = {aten.empty.memory_format, aten.zeros.default, aten.ones.default, aten.full.default}


class RegionUnsupported(Exception):
    """The model cannot be traced into a graph of ATen operations (the full forward is used)."""


def trace(model: torch.nn.Module, example: torch.Tensor, bf16: bool) -> GraphModule:
    """The model's forward pass as ATen operations for ``example``'s shape (eval, no grad).

    Under ``bf16`` the trace runs in CPU autocast, so its casts are in the graph.
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            gm = make_fx(torch.func.functionalize(model, remove="mutations"))(example)
    except Exception as exc:  # dynamic control flow, custom ops: the caller runs the model
        reason = f"the model cannot be traced ({type(exc).__name__}: {exc})"
        raise RegionUnsupported(reason) from exc
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _inputs(node: Node) -> list[Node]:
    return list(node.all_input_nodes)


@torch.no_grad()
def fold_constants(gm: GraphModule) -> None:
    """Compute once every operation that reads weights only (autocast's weight casts, ...)."""
    values: dict[Node, Any] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            values[node] = getattr(gm, node.target)
        elif node.op == "call_function" and node.target in CREATORS:
            continue
        elif node.op == "call_function" and all(n in values for n in _inputs(node)):
            args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: values[n])
            values[node] = node.target(*args, **kwargs)
    count = 0
    for node, value in values.items():
        if node.op == "get_attr" or not isinstance(value, torch.Tensor):
            continue
        if all(user in values for user in node.users):
            continue
        name = f"_folded_{count}"
        count += 1
        gm.register_buffer(name, value)
        with gm.graph.inserting_before(node):
            replacement = gm.graph.get_attr(name)
        node.replace_all_uses_with(replacement)
    gm.graph.eliminate_dead_code()
    gm.recompile()


def _attr(gm: GraphModule, node: Node | None) -> torch.Tensor | None:
    if node is None:
        return None
    if node.op != "get_attr":
        raise ValueError("not a constant")
    value = getattr(gm, node.target)
    return value if isinstance(value, torch.Tensor) else None


@torch.no_grad()
def fold_batchnorm(gm: GraphModule) -> int:
    """Fold each eval-mode BatchNorm that alone reads a convolution into it; how many folded."""
    folded = 0
    for bn in list(gm.graph.nodes):
        if bn.op != "call_function" or bn.target not in BATCH_NORMS:
            continue
        conv = bn.args[0]
        if (
            not isinstance(conv, Node)
            or conv.target != aten.convolution.default
            or len(conv.users) != 1
            or conv.args[6]  # transposed
            or (bn.target == aten.native_batch_norm.default and bn.args[5])  # training
        ):
            continue
        getters = list(bn.users)
        if any(g.target is not operator.getitem or g.args[1] != 0 for g in getters):
            continue
        try:
            weight, bias = _attr(gm, conv.args[1]), _attr(gm, conv.args[2])
            gamma, beta = _attr(gm, bn.args[1]), _attr(gm, bn.args[2])
            mean, var = _attr(gm, bn.args[3]), _attr(gm, bn.args[4])
        except ValueError:
            continue
        if weight is None or mean is None or var is None:
            continue
        eps = float(bn.args[7] if bn.target == aten.native_batch_norm.default else bn.args[6])
        scale = torch.rsqrt(var.double() + eps)
        if gamma is not None:
            scale = scale * gamma.double()
        shift = -mean.double() * scale + (beta.double() if beta is not None else 0.0)
        if bias is not None:
            shift = shift + bias.double() * scale
        # keep the weight's layout (channels_last): oneDNN would otherwise reorder it every call
        new_weight = torch.empty_like(weight).copy_(weight.double() * scale.view(-1, 1, 1, 1))
        new_bias = shift.to(weight.dtype)
        names = []
        for tensor in (new_weight, new_bias):
            name = f"_bn_folded_{folded}_{len(names)}"
            gm.register_buffer(name, tensor)
            names.append(name)
        with gm.graph.inserting_before(conv):
            w_node, b_node = gm.graph.get_attr(names[0]), gm.graph.get_attr(names[1])
        conv.args = (conv.args[0], w_node, b_node, *conv.args[3:])
        for getter in getters:
            getter.replace_all_uses_with(conv)
            gm.graph.erase_node(getter)
        gm.graph.erase_node(bn)
        folded += 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return folded


# ---- the box a consumer needs of its input, per axis -------------------------------------------


def _window_need(span: Span, kernel: int, stride: int, padding: int, dilation: int) -> Span:
    """Input rows (unclipped, may reach into the padding) that output rows ``span`` read."""
    o0, o1 = span
    return o0 * stride - padding, (o1 - 1) * stride - padding + dilation * (kernel - 1) + 1


def _zoom_need(span: Span, factor: int, bilinear: bool, size: int) -> Span:
    """Input rows a whole-number zoom (nearest, or bilinear without align_corners) reads."""
    o0, o1 = span
    if not bilinear:
        return o0 // factor, -(-o1 // factor)
    lo = math.floor((o0 + 0.5) / factor - 0.5)
    hi = math.floor((o1 - 0.5) / factor - 0.5) + 2
    return max(lo, 0), min(hi, size)


def _resample_need(span: Span, size_in: int, size_out: int, align_corners: bool) -> Span:
    """A superset of the input rows any nearest/bilinear resampling of rows ``span`` reads."""
    o0, o1 = span
    if align_corners and size_out > 1:
        ratio = (size_in - 1) / (size_out - 1)
        lo, hi = math.floor(o0 * ratio), math.floor((o1 - 1) * ratio) + 2
    else:
        ratio = size_in / size_out
        lo, hi = math.floor((o0 + 0.5) * ratio - 0.5), math.floor((o1 - 0.5) * ratio) + 2
    return max(lo - 1, 0), min(hi + 1, size_in)  # one row of margin for float rounding


def _pair(value: Any, default: int) -> tuple[int, int]:
    if value is None or (isinstance(value, Sequence) and len(value) == 0):
        return default, default
    if isinstance(value, int):
        return value, value
    values = list(value)
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


@dataclass
class _Rule:
    """How one operation reads its image input(s)."""

    kind: str  # pointwise | window | shift | zoom | resample | cat | global | opaque | passthrough
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    fill: float = 0.0
    shift: tuple[int, int] = (0, 0)  # rows and columns added before the map (constant_pad_nd)
    factor: tuple[int, int] = (1, 1)
    bilinear: bool = False
    align_corners: bool = False


def _shape(node: Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")  # TensorMetadata, or a tuple of them
    if not hasattr(meta, "shape") and isinstance(meta, (tuple, list)):
        meta = meta[0] if meta else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _spatial_dims(dims: Any, ndim: int) -> set[int]:
    dims = [dims] if isinstance(dims, int) else list(dims or range(ndim))
    return {d % ndim for d in dims}


def _rule(node: Node, maps: set[Node]) -> _Rule:
    """The rule for ``node``, whose image inputs (4-D feature maps) are ``maps``."""
    target, args = node.target, node.args
    out = _shape(node)
    if target is operator.getitem:
        return _Rule("passthrough" if args[1] == 0 else "opaque")
    if out is None or len(out) != 4:
        return _Rule("opaque")
    if any(_shape(m)[-2:] != out[-2:] for m in maps) and target not in (
        aten.convolution.default, aten.max_pool2d_with_indices.default, aten.avg_pool2d.default,
        aten.constant_pad_nd.default, aten.upsample_nearest2d.default,
        aten.upsample_bilinear2d.default, aten.upsample_nearest2d.vec,
        aten.upsample_bilinear2d.vec,
    ):  # fmt: skip
        return _Rule("opaque")
    if target in POINTWISE:
        if target in BATCH_NORMS and target == aten.native_batch_norm.default and args[5]:
            return _Rule("opaque")  # training-mode statistics span the map
        if target in (aten.softmax.int, aten._softmax.default, aten.log_softmax.int,
                      aten._log_softmax.default) and args[1] % 4 != 1:  # fmt: skip
            return _Rule("opaque")
        return _Rule("pointwise")
    if target in REDUCTIONS:
        dims = _spatial_dims(args[1] if len(args) > 1 else None, 4)
        keepdim = bool(args[2]) if len(args) > 2 else bool(node.kwargs.get("keepdim", False))
        if dims.isdisjoint({2, 3}) and keepdim:
            return _Rule("pointwise")
        return _Rule("global" if {2, 3} <= dims else "opaque")
    if target == aten.convolution.default:
        if args[6] or args[0] not in maps or any(a in maps for a in _inputs(node)[1:]):
            return _Rule("opaque")  # transposed, or weights computed from the image
        weight = _shape(args[1])
        return _Rule(
            "window", kernel=(weight[2], weight[3]), stride=_pair(args[3], 1),
            padding=_pair(args[4], 0), dilation=_pair(args[5], 1),
        )  # fmt: skip
    if target == aten.max_pool2d_with_indices.default:
        if any(u.args[1] != 0 for u in node.users):
            return _Rule("opaque")  # the indices are positions in the whole map
        kernel = _pair(args[1], 1)
        return _Rule(
            "window", kernel=kernel, stride=_pair(args[2] if len(args) > 2 else None, kernel[0]),
            padding=_pair(args[3] if len(args) > 3 else 0, 0),
            dilation=_pair(args[4] if len(args) > 4 else 1, 1), fill=-math.inf,
        )  # fmt: skip
    if target == aten.avg_pool2d.default:
        kernel = _pair(args[1], 1)
        padding = _pair(args[3] if len(args) > 3 else 0, 0)
        ceil_mode = bool(args[4]) if len(args) > 4 else False
        divisor = args[6] if len(args) > 6 else None
        if padding != (0, 0) or ceil_mode or divisor is not None:
            return _Rule("opaque")  # border averages divide by how much of the window is inside
        stride = _pair(args[2] if len(args) > 2 else None, kernel[0])
        return _Rule("window", kernel=kernel, stride=stride)
    if target == aten.constant_pad_nd.default:
        pads = list(args[1])
        if len(pads) != 4:
            return _Rule("opaque")
        return _Rule("shift", shift=(pads[2], pads[0]), fill=float(args[2] if len(args) > 2 else 0))
    if target in (aten.upsample_nearest2d.default, aten.upsample_bilinear2d.default,
                  aten.upsample_nearest2d.vec, aten.upsample_bilinear2d.vec):  # fmt: skip
        if args[0] not in maps:
            return _Rule("opaque")
        bilinear = "bilinear" in str(target)
        align = bool(args[2]) if bilinear and len(args) > 2 else False
        (hi, wi), (ho, wo) = _shape(args[0])[-2:], out[-2:]
        whole_number = ho % hi == 0 and wo % wi == 0 and _zoom_scales_agree(node, ho // hi)
        # the .vec overloads take sizes or scales: the zero-map route keeps their arguments as is
        if not align and whole_number and ".vec" not in str(target):
            return _Rule("zoom", factor=(ho // hi, wo // wi), bilinear=bilinear)
        return _Rule("resample", bilinear=bilinear, align_corners=align)
    if target == aten.cat.default:
        dim = args[1] if len(args) > 1 else 0
        return _Rule("cat" if dim % 4 == 1 else "opaque")
    return _Rule("opaque")


def _zoom_scales_agree(node: Node, factor: int) -> bool:
    """Explicit scale arguments, when given, are the same whole number as the sizes say."""
    scales = [a for a in node.args[2:] if isinstance(a, float)]
    for a in node.args[1:]:
        if isinstance(a, (list, tuple)) and a and all(isinstance(v, float) for v in a):
            scales.extend(a)
    return all(abs(s - factor) < 1e-9 for s in scales)


def _need(rule: _Rule, box: Box, source: Node) -> Box:
    """The box of input ``source`` a rule reads for output ``box`` (may reach outside the map)."""
    (y0, y1), (x0, x1) = (box[0], box[1]), (box[2], box[3])
    if rule.kind in ("pointwise", "cat", "passthrough"):
        return box
    if rule.kind == "window":
        ys = _window_need((y0, y1), rule.kernel[0], rule.stride[0], rule.padding[0],
                          rule.dilation[0])  # fmt: skip
        xs = _window_need((x0, x1), rule.kernel[1], rule.stride[1], rule.padding[1],
                          rule.dilation[1])  # fmt: skip
        return (*ys, *xs)
    if rule.kind == "shift":
        return y0 - rule.shift[0], y1 - rule.shift[0], x0 - rule.shift[1], x1 - rule.shift[1]
    h, w = _shape(source)[-2:]
    if rule.kind == "zoom":
        ys = _zoom_need((y0, y1), rule.factor[0], rule.bilinear, h)
        return (*ys, *_zoom_need((x0, x1), rule.factor[1], rule.bilinear, w))
    raise AssertionError(rule.kind)


def _union(a: Box | None, b: Box) -> Box:
    if a is None:
        return b
    return min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])


def _clip(box: Box, h: int, w: int) -> Box:
    return max(box[0], 0), min(box[1], h), max(box[2], 0), min(box[3], w)


def _plan(gm: GraphModule, box: Box) -> tuple[dict[Node, _Rule], dict[Node, Box], set[Node]]:
    """Rules, computed boxes and image-dependent 4-D maps of every node."""
    maps: set[Node] = set()  # image-dependent 4-D feature maps that can be sliced
    image: set[Node] = set()  # everything that depends on the image
    rules: dict[Node, _Rule] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            image.add(node)
            maps.add(node)
        elif node.op == "call_function" and any(n in image for n in _inputs(node)):
            image.add(node)
            rule = _rule(node, {n for n in _inputs(node) if n in maps})
            if rule.kind == "passthrough" and node.args[0] not in maps:
                rule = _Rule("opaque")
            # a map in, a map out; an image vector (pooled features) only broadcasts over maps
            vectors = [n for n in _inputs(node) if n in image and n not in maps]
            if rule.kind in ("pointwise", "cat") and any(
                _shape(v) is None or len(_shape(v)) != 4 or _shape(v)[-2:] != (1, 1)
                for v in vectors
            ):
                rule = _Rule("opaque")
            if rule.kind == "cat" and vectors:
                rule = _Rule("opaque")
            shape = _shape(node)
            if rule.kind == "passthrough" or (
                rule.kind != "global"
                and shape is not None
                and len(shape) == 4
                and shape[-2:] != (1, 1)
                and (rule.kind == "opaque" or any(n in maps for n in _inputs(node)))
            ):
                maps.add(node)
            elif rule.kind != "global":
                rule = _Rule("opaque")  # computed whole: no map of the image to cut
            rules[node] = rule
    result = _result(gm)
    if not isinstance(result, Node) or result not in maps:
        raise RegionUnsupported("the model's output is not one feature map")
    boxes: dict[Node, Box] = {result: box}
    for node in reversed(list(gm.graph.nodes)):
        if node not in image or node.op == "placeholder":
            continue
        rule = rules[node]
        shape = _shape(node)
        full = (0, shape[-2], 0, shape[-1]) if shape is not None and len(shape) == 4 else None
        whole = rule.kind in ("opaque", "global") or node not in maps
        if whole or node not in boxes:
            boxes[node] = full if full is not None else (0, 0, 0, 0)
        for source in _inputs(node):
            if source not in maps:
                continue
            h, w = _shape(source)[-2:]
            if whole:
                need = (0, h, 0, w)
            elif rule.kind == "resample":
                (ho, wo), own = shape[-2:], boxes[node]
                need = (
                    *_resample_need((own[0], own[1]), h, ho, rule.align_corners),
                    *_resample_need((own[2], own[3]), w, wo, rule.align_corners),
                )
            else:
                need = _clip(_need(rule, boxes[node], source), h, w)
            boxes[source] = _union(boxes.get(source), need)
    return rules, boxes, maps


def _result(gm: GraphModule) -> Node:
    output = next(n for n in gm.graph.nodes if n.op == "output")
    result = output.args[0]
    if isinstance(result, (list, tuple)) and len(result) == 1:
        result = result[0]
    if not isinstance(result, Node):
        raise RegionUnsupported("the model does not return one tensor")
    return result


def _take(
    graph: Graph, value: Node, have: Box, want: Box, size: tuple[int, int], fill: float
) -> Node:
    """Emit: ``value`` (holding box ``have`` of a map of ``size``) cut and padded to ``want``."""
    h, w = size
    inside = _clip(want, h, w)
    for dim, lo, hi, start, stop in ((2, inside[0], inside[1], have[0], have[1]),
                                     (3, inside[2], inside[3], have[2], have[3])):  # fmt: skip
        if (lo, hi) != (start, stop):
            value = graph.call_function(aten.slice.Tensor, (value, dim, lo - start, hi - start))
    pads = [inside[2] - want[2], want[3] - inside[3], inside[0] - want[0], want[1] - inside[1]]
    if any(pads):
        value = graph.call_function(aten.constant_pad_nd.default, (value, pads, fill))
    return value


def _own_padding(
    rule: _Rule, need: Box, own: Box, size: tuple[int, int]
) -> tuple[tuple[int, int] | None, Box]:
    """The layer's own symmetric padding that covers what ``need`` reaches outside the map.

    Padding by hand copies the input; a layer's padding is free. Where ``need`` reaches out on
    one side only, the padding is that amount on both sides and the extra output rows are cut
    off (a view). Returns (None, ...) when the strides do not line up (pad by hand then), else
    the padding and the box the layer's output then covers.
    """
    h, w = size
    inside = _clip(need, h, w)
    over = (inside[0] - need[0], need[1] - inside[1], inside[2] - need[2], need[3] - inside[3])
    pads, have = [], []
    for axis, (before, after) in enumerate(((over[0], over[1]), (over[2], over[3]))):
        pad, stride, kernel = max(before, after), rule.stride[axis], rule.kernel[axis]
        if (pad - before) % stride or (rule.fill != 0.0 and pad > kernel // 2):
            return None, own  # max pooling pads at most half its window
        if rule.fill != 0.0 and rule.fill != -math.inf:
            return None, own
        first = (pad - before) // stride  # output row of ``need``'s first row
        length = inside[2 * axis + 1] - inside[2 * axis]
        rows = (length + 2 * pad - rule.dilation[axis] * (kernel - 1) - 1) // stride + 1
        start = own[2 * axis] - first
        pads.append(pad)
        have.extend((start, start + rows))
    return (pads[0], pads[1]), (have[0], have[1], have[2], have[3])


def _as_pair(values: torch.Tensor) -> tuple[torch.Tensor, None]:
    """Max pooling's (values, indices) shape, for a graph whose indices are never read."""
    return values, None


def restrict(gm: GraphModule, box: Box) -> tuple[GraphModule, float]:
    """A graph computing ``gm``'s output cropped to ``box`` from each map's needed box only, and
    the share of the feature-map values (pixels x channels) it computes."""
    rules, boxes, maps = _plan(gm, box)
    graph = Graph()
    env: dict[Node, Node] = {}
    held: dict[Node, Box] = {}  # the box each emitted map holds
    computed = full_total = 0

    def size(node: Node) -> tuple[int, int]:
        shape = _shape(node)
        return shape[-2], shape[-1]

    for node in gm.graph.nodes:
        if node.op == "output":
            result = _result(gm)
            value = _take(graph, env[result], held[result], box, size(result), 0.0)
            graph.output(value)
            continue
        if node.op != "call_function" or node not in rules:
            env[node] = graph.node_copy(node, lambda n: env[n])
            if node.op == "placeholder":
                h, w = size(node)
                held[node] = (0, h, 0, w)
            continue
        rule, own = rules[node], boxes[node]

        def take(source: Node, want: Box, fill: float = 0.0) -> Node:
            return _take(graph, env[source], held[source], want, size(source), fill)

        def whole(source: Node) -> Node:
            if source not in maps:
                return env[source]
            h, w = size(source)
            return take(source, (0, h, 0, w))

        if rule.kind == "passthrough":
            env[node] = graph.call_function(operator.getitem, (env[node.args[0]], 0))
        elif rule.kind in ("opaque", "global"):
            env[node] = graph.call_function(
                node.target, *torch.fx.node.map_arg((node.args, node.kwargs), whole)
            )  # fmt: skip
        elif rule.kind in ("pointwise", "cat"):
            args, kwargs = torch.fx.node.map_arg(
                (node.args, node.kwargs),
                lambda n, own=own: take(n, own) if n in maps else env[n],  # type: ignore[misc]
            )
            env[node] = graph.call_function(node.target, args, kwargs)
        elif rule.kind == "window":
            source = node.args[0]
            need = _need(rule, own, source)
            padding, have = _own_padding(rule, need, own, size(source))
            cut = take(source, need if padding is None else _clip(need, *size(source)), rule.fill)
            pad = [0, 0] if padding is None else list(padding)
            args = list(torch.fx.node.map_arg(node.args, lambda n: env[n]))
            args[0] = cut
            if node.target == aten.convolution.default:
                args[4] = pad
            elif node.target == aten.max_pool2d_with_indices.default:
                args = [cut, list(rule.kernel), list(rule.stride), pad,
                        list(rule.dilation), False]  # fmt: skip
            else:  # avg_pool2d without padding
                args = [cut, list(rule.kernel), list(rule.stride), [0, 0], False]
            value = graph.call_function(node.target, tuple(args))
            if padding is not None:
                if node.target == aten.max_pool2d_with_indices.default:
                    value = graph.call_function(operator.getitem, (value, 0))
                    value = _take(graph, value, have, own, size(node), 0.0)
                    value = graph.call_function(_as_pair, (value,))
                else:
                    value = _take(graph, value, have, own, size(node), 0.0)
            env[node] = value
        elif rule.kind == "shift":
            source = node.args[0]
            env[node] = take(source, _need(rule, own, source), rule.fill)
        elif rule.kind == "zoom":
            source = node.args[0]
            need = _need(rule, own, source)
            cut = take(source, need)
            fy, fx = rule.factor
            out_size = [(need[1] - need[0]) * fy, (need[3] - need[2]) * fx]
            args = list(torch.fx.node.map_arg(node.args, lambda n: env[n]))
            args[0], args[1] = cut, out_size
            zoomed = graph.call_function(node.target, tuple(args), dict(node.kwargs))
            offset = (need[0] * fy, need[0] * fy + out_size[0], need[2] * fx,
                      need[2] * fx + out_size[1])  # fmt: skip
            env[node] = _take(graph, zoomed, offset, own, size(node), 0.0)
        elif rule.kind == "resample":
            # the slice it needs, back in a zero map of full size: the weights stay the full map's
            source = node.args[0]
            h, w = size(source)
            need = boxes[source]  # held box covers the rows the resampling reads
            cut = take(source, need)
            pads = [need[2], w - need[3], need[0], h - need[1]]
            embedded = graph.call_function(aten.constant_pad_nd.default, (cut, pads, 0.0))
            args = list(torch.fx.node.map_arg(node.args, lambda n: env[n]))
            args[0] = embedded
            resampled = graph.call_function(node.target, tuple(args), dict(node.kwargs))
            ho, wo = size(node)
            env[node] = _take(graph, resampled, (0, ho, 0, wo), own, (ho, wo), 0.0)
        else:
            raise AssertionError(rule.kind)
        if node in maps:
            held[node] = own
        if node in maps and node.target is not operator.getitem:
            shape = _shape(node)
            channels = shape[1]
            computed += channels * (own[1] - own[0]) * (own[3] - own[2])
            full_total += channels * shape[2] * shape[3]
    restricted = GraphModule(gm, graph)
    restricted.graph.eliminate_dead_code()
    restricted.recompile()
    return restricted, computed / max(full_total, 1)


# out-of-place -> in-place: functionalised tracing made every ReLU and residual add allocate
INPLACE = {
    aten.relu.default: aten.relu_.default,
    aten.silu.default: aten.silu_.default,
    aten.sigmoid.default: aten.sigmoid_.default,
    aten.hardswish.default: aten.hardswish_.default,
    aten.hardtanh.default: aten.hardtanh_.default,
    aten.leaky_relu.default: aten.leaky_relu_.default,
    aten.add.Tensor: aten.add_.Tensor,
    aten.mul.Tensor: aten.mul_.Tensor,
    aten.clamp_min.default: aten.clamp_min_.default,
}  # fmt: skip
# operations whose result is a new tensor, never a view of another
FRESH = (
    (POINTWISE - {aten.alias.default, *BATCH_NORMS})
    | {aten.clamp_min.default}
    | {aten.convolution.default, aten.cat.default, aten.constant_pad_nd.default,
       aten.upsample_nearest2d.default, aten.upsample_bilinear2d.default,
       aten.upsample_nearest2d.vec, aten.upsample_bilinear2d.vec, aten.avg_pool2d.default}
)  # fmt: skip
FRESH_TUPLES = {aten.max_pool2d_with_indices.default, *BATCH_NORMS}


def reuse_buffers(gm: GraphModule) -> int:
    """Run element-wise operations in place where their first input is a new tensor read by
    nothing else (needs ``tensor_meta`` from ShapeProp); how many were changed."""
    fresh: set[Node] = set()
    changed = 0
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is operator.getitem:
            if node.args[0].target in FRESH_TUPLES and node.args[0] in fresh:
                fresh.add(node)
            continue
        if node.target in FRESH_TUPLES:
            fresh.add(node)
            continue
        first = node.args[0] if node.args else None
        if node.target in FRESH:
            fresh.add(node)  # a new tensor, or (made in place below) the fresh ``first``
        if (
            node.target in INPLACE
            and isinstance(first, Node)
            and first in fresh
            and len(first.users) == 1
            and first not in node.args[1:]
            and _shape(first) == _shape(node)
            and first.meta.get("tensor_meta") is not None
            and node.meta.get("tensor_meta") is not None
            and first.meta["tensor_meta"].dtype == node.meta["tensor_meta"].dtype
        ):
            node.target = INPLACE[node.target]
            changed += 1
    gm.recompile()
    return changed


class BoxForward:
    """``model`` on batches shaped like ``example``, only output ``box`` computed.

    ``precision`` is "32" or "bf16-mixed" (the graph keeps autocast's casts). ``check`` (the box
    graph) and ``reference`` (the full traced graph, same folded weights, cropped) are their
    outputs for ``example``, to compare before use.
    """

    def __init__(
        self, model: torch.nn.Module, example: torch.Tensor, box: Box, precision: str
    ) -> None:
        from torch.fx.passes.shape_prop import ShapeProp

        full = trace(model, example, precision == "bf16-mixed")
        try:
            fold_constants(full)
            self.folded = fold_batchnorm(full)
            with torch.no_grad():
                reference = ShapeProp(full).propagate(example)
                self.net, self.computed_share = restrict(full, box)
                self.check = ShapeProp(self.net).propagate(example)
            reuse_buffers(self.net)
        except RegionUnsupported:
            raise
        except Exception as exc:  # an operation the box algebra mishandles: the model runs whole
            raise RegionUnsupported(f"no box graph ({type(exc).__name__}: {exc})") from exc
        self.box = box
        self.reference = reference[..., box[0] : box[1], box[2] : box[3]]  # full graph, cropped

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net(x)
