"""Training and evaluation of one job under the paper protocol, on PyTorch Lightning.

Adam with cosine annealing, early stopping on validation IoU, the best validation weights kept
(in memory, then as safetensors), and ONE evaluation on the held-out test split, which is never
used for any choice. Training samples are random crops (flips and 90 degree turns when
augmenting); validation and test see whole images. The same job and seed give the same test
metrics on CPU.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss

from matseg import metrics
from matseg.atomic import write_json
from matseg.datasets.dataset import MicrographDataset, Sample
from matseg.errors import TrainingError
from matseg.models import resolve_precision
from matseg.profile import Training

log = logging.getLogger(__name__)


# --- data ---------------------------------------------------------------------------------------


class RandomCrops(torch.utils.data.Dataset):
    """Training samples: random ``patch`` crops of the training images, seeded per epoch.

    Sample ``i`` of epoch ``e`` draws from ``default_rng([seed, e, i])``, so the crops are the
    same on every run and differ from epoch to epoch. Images smaller than the patch are padded
    (image reflected, mask with the ignore index).
    """

    def __init__(
        self,
        base: MicrographDataset,
        patch: int | None,
        length: int,
        seed: int,
        augment: bool,
        ignore_index: int,
    ) -> None:
        self.base = base
        self.patch = patch
        self.length = length
        self.seed = seed
        self.augment = augment
        self.ignore_index = ignore_index
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        sample = self.base[int(rng.integers(len(self.base)))]
        image, mask = sample.image, _mask_or_fail(sample)
        if self.patch is not None:
            image, mask = _pad_to(image, mask, self.patch, self.ignore_index)
            h, w = mask.shape
            y = int(rng.integers(h - self.patch + 1))
            x = int(rng.integers(w - self.patch + 1))
            image = image[:, y : y + self.patch, x : x + self.patch]
            mask = mask[y : y + self.patch, x : x + self.patch]
        if self.augment:
            if rng.random() < 0.5:
                image, mask = image[:, :, ::-1], mask[:, ::-1]
            if rng.random() < 0.5:
                image, mask = image[:, ::-1, :], mask[::-1, :]
            k = int(rng.integers(4))
            image, mask = np.rot90(image, k, axes=(1, 2)), np.rot90(mask, k)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(
            np.ascontiguousarray(mask)
        )


def _mask_or_fail(sample: Sample) -> np.ndarray:
    if sample.mask is None:
        raise ValueError(f"{sample.meta.source}: training needs a mask")
    return sample.mask


def _pad_to(
    image: np.ndarray, mask: np.ndarray, size: int, ignore_index: int
) -> tuple[np.ndarray, np.ndarray]:
    ph, pw = max(0, size - mask.shape[0]), max(0, size - mask.shape[1])
    if ph == 0 and pw == 0:
        return image, mask
    image = np.pad(
        image, ((0, 0), (0, ph), (0, pw)), mode="reflect" if min(mask.shape) > 1 else "edge"
    )
    return image, np.pad(mask, ((0, ph), (0, pw)), constant_values=ignore_index)


class WholeImages(torch.utils.data.Dataset):
    """Validation / test samples: whole images with their masks, one at a time."""

    def __init__(self, base: MicrographDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.base[index]
        return torch.from_numpy(sample.image), torch.from_numpy(_mask_or_fail(sample))


def crops_per_epoch(base: MicrographDataset, patch: int | None) -> int:
    """Crops that cover each training pixel about once: sum of ceil(H * W / patch^2)."""
    if patch is None:
        return len(base)
    total = 0
    for ref in base.refs:
        image, _ = base.cache.get(ref.item)
        h, w = (ref.window.h, ref.window.w) if ref.window.h > 0 else image.shape[-2:]
        total += math.ceil(h * w / patch**2)
    return max(total, 1)


# --- model wrapper ------------------------------------------------------------------------------


def pad_to_multiple(x: torch.Tensor, multiple: int = 32) -> tuple[torch.Tensor, int, int]:
    """Reflect-pad (N, C, H, W) so H and W divide by ``multiple`` (encoders downsample 32x)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, h, w


def predict_logits(
    model: torch.nn.Module, image: torch.Tensor, channels_last: bool
) -> torch.Tensor:
    """Logits for whole images of any size (padded to a multiple of 32, then cropped back)."""
    padded, h, w = pad_to_multiple(image)
    if channels_last:
        padded = padded.contiguous(memory_format=torch.channels_last)
    return model(padded)[..., :h, :w]


class SegmentationModule(L.LightningModule):
    """The segmentation model with the paper's optimiser, schedule and validation IoU."""

    def __init__(
        self,
        model: torch.nn.Module,
        num_classes: int,
        loss: str,
        learning_rate: float,
        scheduler: str,
        max_epochs: int,
        ignore_index: int,
        channels_last: bool,
        time_budget_s: float | None = None,
        handback: Path | None = None,
    ) -> None:
        super().__init__()
        self.time_budget_s = time_budget_s
        self.handback = handback  # where rank 0 leaves the outcome of a multi-process fit
        self.outcome: dict[str, Any] | None = None
        self._fit_start = time.perf_counter()
        self.model = model
        self.num_classes = num_classes
        self.loss_name = loss
        self.learning_rate = learning_rate
        self.scheduler_name = scheduler
        self.max_epochs = max_epochs
        self.ignore_index = ignore_index
        self.channels_last = channels_last
        self.dice = DiceLoss(mode="multiclass", ignore_index=ignore_index, from_logits=True)
        self._val_cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.best_iou = -math.inf
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, float]] = []
        self.diverged: dict[str, Any] | None = None  # where the loss first was not finite
        self._epoch_losses: list[float] = []
        self._epoch_start = time.perf_counter()
        self._epoch_lr = learning_rate
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return predict_logits(self.model, x, self.channels_last)

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        parts = []
        if "ce" in self.loss_name:
            parts.append(F.cross_entropy(logits, target, ignore_index=self.ignore_index))
        if "dice" in self.loss_name:
            parts.append(self.dice(logits, target))
        return torch.stack(parts).sum()

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = self._loss(self.model(x), y)
        value = float(loss.detach())
        if not math.isfinite(value):  # diverged: stop now, never let NaN weights into results
            self.diverged = {"epoch": self.current_epoch, "step": batch_idx, "loss": str(value)}
            self.trainer.should_stop = True
            return None  # no backward pass, no optimiser step
        self._epoch_losses.append(value)
        return loss

    def on_train_epoch_start(self) -> None:
        self._epoch_lr = float(self.optimizers().param_groups[0]["lr"])  # the rate this epoch uses
        self._epoch_start = time.perf_counter()

    def on_validation_epoch_start(self) -> None:
        self._val_cm.zero_()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        pred = self(x).argmax(dim=1)
        self._val_cm += (
            metrics.confusion_matrices(pred, y, self.num_classes, self.ignore_index).sum(0).cpu()
        )

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        # each process validated its own share of the images (ValidationShards): sum the
        # confusion matrices, so every process takes the same best-epoch decision
        cm = self.trainer.strategy.reduce(self._val_cm.to(self.device), reduce_op="sum")
        val_iou = float(np.nanmean(metrics.iou(cm.cpu().numpy())))
        # already equal on every process; "max" only tells Lightning it is synchronised
        distributed = self.trainer.world_size > 1
        self.log("val_iou", val_iou, prog_bar=True, sync_dist=distributed, reduce_fx="max")
        if val_iou > self.best_iou:
            self.best_iou, self.best_epoch = val_iou, self.current_epoch
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        loss = float(np.mean(self._epoch_losses)) if self._epoch_losses else float("nan")
        if self.trainer.world_size > 1:  # the mean over the processes' shares of the crops
            loss = float(self.trainer.strategy.reduce(torch.tensor(loss), reduce_op="mean"))
        self.history.append(
            {
                "epoch": self.current_epoch,
                "train_loss": loss,
                "val_iou": val_iou,
                "lr": self._epoch_lr,
                "seconds": time.perf_counter() - self._epoch_start,
            }
        )
        self._epoch_losses = []
        _log_epoch(self.history[-1], self.max_epochs)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.model.parameters(), lr=self.learning_rate)
        if self.scheduler_name == "none":
            return opt
        if self.time_budget_s is None:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.max_epochs)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        # With a wall-clock budget the epoch count is unknown in advance: anneal over the budget
        # instead, so the rate reaches its minimum when the time is up (stepped every batch).
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self._budget_fraction_cosine)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _budget_fraction_cosine(self, step: int) -> float:
        assert self.time_budget_s is not None
        elapsed = time.perf_counter() - self._fit_start
        if self.trainer.world_size > 1:  # rank 0's clock, so every process steps the same rate
            elapsed = float(self.trainer.strategy.broadcast(elapsed, src=0))
        done = min(1.0, elapsed / self.time_budget_s)
        return 0.5 * (1.0 + math.cos(math.pi * done))

    def on_fit_start(self) -> None:
        self._fit_start = time.perf_counter()

    def on_fit_end(self) -> None:
        stopper = next(
            (c for c in self.trainer.callbacks if isinstance(c, L.pytorch.callbacks.EarlyStopping)),
            None,
        )
        if stopper is not None and stopper.stopped_epoch > 0:
            stopped = "early stopping"
        elif self.trainer.current_epoch < self.max_epochs:
            stopped = "time budget"
        else:
            stopped = "max epochs"
        self.outcome = {
            "diverged": self.diverged,
            "best_state": self.best_state,
            "best_iou": self.best_iou,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "stopped_by": stopped,
        }
        if self.trainer.is_global_zero and self.handback is not None:
            # processes started by spawning keep their state: hand rank 0's to the caller
            write_handback(self.handback, self.outcome)


HANDBACK = "fit-outcome"  # + .json (curves, best epoch) and .safetensors (best weights)


def handback_files(stem: Path) -> tuple[Path, Path]:
    return stem.with_suffix(".json"), stem.with_suffix(".safetensors")


def write_handback(stem: Path, outcome: dict[str, Any]) -> None:
    """Rank 0's outcome of a spawned fit for the calling process: the best weights as
    safetensors and the rest as JSON (no pickle, so nothing in a run folder can run code)."""
    from safetensors.torch import save_file

    meta, weights = handback_files(stem)
    state = outcome["best_state"]
    if state is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(weights))
    write_json(
        meta,
        {k: v for k, v in outcome.items() if k != "best_state"} | {"has_state": state is not None},
    )


def read_handback(stem: Path) -> dict[str, Any] | None:
    """The outcome :func:`write_handback` left (None when rank 0 left none); files removed."""
    from safetensors.torch import load_file

    meta, weights = handback_files(stem)
    if not meta.is_file():
        return None
    outcome = json.loads(meta.read_text(encoding="utf-8"))
    outcome["best_state"] = load_file(str(weights)) if outcome.pop("has_state") else None
    meta.unlink()
    weights.unlink(missing_ok=True)
    return outcome


class _LightningChatter(logging.Filter):
    """Lets through everything but Lightning's informational records (banners, tips)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith("lightning")


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """While training: Lightning's banners ("GPU available: False"), tips and library
    deprecation warnings stay off the terminal, and go to the job's log file instead; its
    warnings and errors, and the progress bar, still show."""
    chatter = _LightningChatter()
    handlers = [
        h
        for name in ("", "lightning", "lightning.pytorch", "lightning.fabric")
        for h in logging.getLogger(name).handlers
        if not isinstance(h, logging.FileHandler)
    ]
    for handler in handlers:
        handler.addFilter(chatter)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for handler in handlers:
            handler.removeFilter(chatter)
    for w in caught:  # to the job log (matseg's logger reaches the terminal only from WARNING)
        log.info("library warning (%s): %s", w.category.__name__, w.message)


EPOCH_RECORD = "matseg_epoch"  # a log record's extra: the epoch's entry and the epoch budget
HEARTBEAT_S = 60.0  # inside a long epoch, a progress record at least this often


def _log_epoch(entry: dict[str, float], max_epochs: int | None = None) -> None:
    log.info(
        "epoch %d: train loss %.4f, val IoU %.4f, lr %.2e, %.1f s",
        entry["epoch"], entry["train_loss"], entry["val_iou"], entry["lr"], entry["seconds"],
        extra={EPOCH_RECORD: {**entry, "max_epochs": max_epochs}},
    )  # fmt: skip


class _Heartbeat(L.Callback):
    """A progress record at least every :data:`HEARTBEAT_S` inside an epoch (on a slow CPU the
    first epoch of a large model can take half an hour), to the job log and, without a
    terminal, to stdout."""

    def __init__(self, interval_s: float | None = None) -> None:
        self.interval_s = HEARTBEAT_S if interval_s is None else interval_s
        self._last = time.perf_counter()
        self._epoch_start = self._last

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._last = self._epoch_start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *_: Any) -> None:
        now = time.perf_counter()
        if now - self._last < self.interval_s or trainer.global_rank != 0:
            return
        self._last = now
        total = trainer.num_training_batches
        log.info(
            "epoch %d: batch %d of %s, %.0f s into the epoch",
            trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.completed,
            total, now - self._epoch_start,
        )  # fmt: skip


class _NewEpochCrops(L.Callback):
    """Tell the crop dataset which epoch it is, so crops change per epoch yet stay seeded."""

    def __init__(self, crops: RandomCrops) -> None:
        self.crops = crops

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.crops.epoch = trainer.current_epoch


class ValidationShards(torch.utils.data.DistributedSampler):  # type: ignore[type-arg]
    """Validation images split over the training processes, each image exactly once.

    torch's DistributedSampler (which Lightning would insert) pads the shards to equal length
    by repeating images, which would count them twice in the validation IoU. The process group
    exists only once training starts, so rank and world size are read when iterating.
    """

    def __init__(self, length: int) -> None:  # no super().__init__: it needs the process group
        self.length = length

    @staticmethod
    def _place() -> tuple[int, int]:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def __iter__(self) -> Iterator[int]:
        rank, world = self._place()
        return iter(range(rank, self.length, world))

    def __len__(self) -> int:
        rank, world = self._place()
        return len(range(rank, self.length, world))

    def set_epoch(self, epoch: int) -> None:  # the order of validation images never changes
        pass


def launched_by_cluster() -> bool:
    """Whether a launcher started one process per device (SLURM srun, torchrun, Lightning)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    return (
        SLURMEnvironment.detect() or TorchElasticEnvironment.detect() or "LOCAL_RANK" in os.environ
    )


def process_rank() -> int:
    """This process's global rank among the training processes (0 when there is one).

    The variables Lightning reads (RANK from torchrun, SLURM_PROCID under srun, LOCAL_RANK from
    Lightning's own launcher), read at call time. Under SLURM only for a batch job Lightning
    would use (SLURMEnvironment.detect), not for a shell that merely runs inside an allocation.
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if SLURMEnvironment.detect() and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"])
    return int(os.environ.get("LOCAL_RANK", 0))


def distribution(training: Training) -> dict[str, Any]:
    """The Trainer's devices, nodes and strategy for a job's training block.

    Several devices on one machine are started by spawning (``ddp_spawn``): the caller's
    process keeps running the job, whatever started it (CLI, notebook, worker process, Ray
    task). When a cluster launcher already started one process per device (SLURM, torchrun),
    Lightning's ``ddp`` joins them, and only rank 0 writes results (see ``process_rank``).
    """
    devices = training.devices
    nodes = training.num_nodes
    strategy = training.strategy
    if strategy == "auto" and devices * nodes > 1:
        strategy = "ddp" if launched_by_cluster() else "ddp_spawn"
    return {"devices": devices, "num_nodes": nodes, "strategy": strategy}


@contextlib.contextmanager
def _tensors_shared_by_file(spawning: bool) -> Iterator[None]:
    """While spawning training processes, hand them tensors through files in /dev/shm.

    The spawned processes receive the model and data by pickling. torch's default way to share a
    tensor, passing file descriptors, fails in some containers (an ftruncate EINVAL on receipt,
    seen here); the file-name way works there and elsewhere. Restored after the fit.
    """
    import torch.multiprocessing as mp

    if not spawning:
        yield
        return
    before = mp.get_sharing_strategy()
    mp.set_sharing_strategy("file_system")
    try:
        yield
    finally:
        mp.set_sharing_strategy(before)


def uses_channels_last(training: Training) -> bool:
    """The profile's channels_last, defaulting to on with bf16 (where it pays on CPU)."""
    value = training.channels_last
    return training.precision == "bf16-mixed" if value is None else bool(value)


# --- one job ------------------------------------------------------------------------------------


@dataclass
class FitResult:
    """What training produced: the best weights, when they were found, and the curves."""

    model: torch.nn.Module
    best_epoch: int
    best_val_iou: float
    epochs_run: int
    seconds: float
    history: list[dict[str, float]]
    stopped_by: str


def fit(
    model: torch.nn.Module,
    train: MicrographDataset,
    val: MicrographDataset,
    num_classes: int,
    training: Training,
    seed: int,
    ignore_index: int,
    log_dir: Path,
    progress_bar: bool = True,
) -> FitResult:
    """Train with early stopping on validation IoU; return the model with its best weights."""
    L.seed_everything(seed, workers=True, verbose=False)
    # a plan's jobs hold a resolved precision; a Training given directly may still say "auto"
    precision = resolve_precision(training.precision, training.accelerator)
    training = training.model_copy(update={"precision": precision})
    channels_last = uses_channels_last(training)
    patch = training.patch_size
    length = training.crops_per_epoch or crops_per_epoch(train, patch)
    crops = RandomCrops(train, patch, length, seed, training.augment, ignore_index)
    generator = torch.Generator().manual_seed(seed)
    train_loader = torch.utils.data.DataLoader(
        crops, batch_size=training.batch_size, shuffle=True, generator=generator, drop_last=False
    )
    whole = WholeImages(val)
    val_loader = torch.utils.data.DataLoader(
        whole, batch_size=1, sampler=ValidationShards(len(whole))
    )
    where = distribution(training)
    spawned = where["strategy"] == "ddp_spawn"
    handback = log_dir / HANDBACK
    for stale in handback_files(handback):  # never read a previous attempt's outcome
        stale.unlink(missing_ok=True)
    module = SegmentationModule(
        model,
        num_classes,
        training.loss,
        training.learning_rate,
        training.scheduler,
        training.max_epochs,
        ignore_index,
        channels_last,
        time_budget_s=60 * training.max_minutes
        if training.max_minutes and training.scheduler == "cosine"
        else None,
        handback=handback if spawned else None,
    )
    stopper = L.pytorch.callbacks.EarlyStopping("val_iou", mode="max", patience=training.patience)
    with quiet_lightning():  # banners and tips to the job log, not the terminal
        trainer = L.Trainer(
            accelerator=training.accelerator,
            **where,
            precision=training.precision,
            max_epochs=training.max_epochs,
            max_time={"minutes": training.max_minutes} if training.max_minutes else None,
            callbacks=[stopper, _NewEpochCrops(crops), _Heartbeat()],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=progress_bar,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            deterministic=True,
            default_root_dir=log_dir,
            log_every_n_steps=1,
        )
        start = time.perf_counter()
        log_dir.mkdir(parents=True, exist_ok=True)
        with _tensors_shared_by_file(spawned):
            trainer.fit(module, train_loader, val_loader)
        seconds = time.perf_counter() - start
        outcome = module.outcome
        if spawned:  # spawned processes trained it: rank 0 left what it found in the hand-back
            outcome = read_handback(handback) or outcome
            for entry in outcome["history"] if outcome else []:  # their log lines stayed there
                _log_epoch(entry, training.max_epochs)
        if outcome is None:
            raise RuntimeError(f"training in {log_dir} ended without an outcome from rank 0")
        if outcome.get("diverged"):
            d = outcome["diverged"]
            raise TrainingError(
                f"job {log_dir.name}",
                "a finite training loss",
                f"loss {d['loss']} at epoch {d['epoch']}, batch {d['step']} (learning rate "
                f"{training.learning_rate:g}, precision {training.precision})",
                "lower training.learning_rate or use precision 32, then run again with --resume "
                "(this job has no result, so it is trained again)",
            )
        if outcome["best_state"] is not None:
            module.model.load_state_dict(outcome["best_state"])
        model_out = module.model.cpu().to(memory_format=torch.contiguous_format)
        return FitResult(
            model=copy.deepcopy(model_out).eval(),
            best_epoch=outcome["best_epoch"],
            best_val_iou=outcome["best_iou"],
            epochs_run=len(outcome["history"]),
            seconds=seconds,
            history=outcome["history"],
            stopped_by=outcome["stopped_by"],
        )


# Test-time augmentation: the dihedral views a micrograph has no preferred one of (nnU-Net
# mirrors at test time by default). Each view is (quarter turns, mirror left-right).
TTA_VIEWS = {
    "none": [(0, False)],
    "flips": [(0, False), (0, True), (2, False), (2, True)],
    "d4": [(r, f) for r in range(4) for f in (False, True)],
}


def predict_probabilities(
    model: torch.nn.Module, x: torch.Tensor, channels_last: bool, tta: str = "none"
) -> torch.Tensor:
    """Class probabilities (N, K, H, W), averaged over the test-time views of ``tta``."""
    total = None
    for turns, mirror in TTA_VIEWS[tta]:
        view = torch.rot90(x, turns, (2, 3)) if turns else x  # rot90 copies even for 0 turns
        view = torch.flip(view, (3,)) if mirror else view
        prob = predict_logits(model, view, channels_last).float().softmax(dim=1)
        prob = torch.flip(prob, (3,)) if mirror else prob
        prob = torch.rot90(prob, -turns, (2, 3)) if turns else prob
        total = prob if total is None else total + prob
    assert total is not None
    return total / len(TTA_VIEWS[tta])


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    images: MicrographDataset,
    precision: str,
    channels_last: bool,
    tta: str = "none",
) -> list[tuple[Sample, np.ndarray]]:
    """Hard predictions (class ids) for whole images, with their samples."""
    model.eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    out = []
    for i in range(len(images)):
        sample = images[i]
        x = torch.from_numpy(sample.image)[None]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            prob = predict_probabilities(model, x, channels_last, tta)
        out.append((sample, prob.argmax(dim=1)[0].numpy().astype(np.int64)))
    model.to(memory_format=torch.contiguous_format)
    return out
