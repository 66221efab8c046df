"""Fine-tuning a backbone as a scene classifier (notebook 02, the study's second step).

The study fine-tuned ResNet-152 (ImageNet) as a 71-class scene classifier: Adam, lr 0.001,
cross-entropy, batch 32, 30 + 50 + 50 epochs, gray 224 px centre crops (``paper.yaml``).
:func:`train` checkpoints every epoch, so an interrupted run resumes and gives the same
weights::

    out_dir/history.csv              one row per epoch and split (train/val)
    out_dir/checkpoints/last.pt      end of the latest epoch (model, optimiser, history...)
    out_dir/checkpoints/best.pt      best validation macro-F1 (ties: lower val loss)
    out_dir/checkpoints/stage{i}.pt  end of stage i

Every checkpoint reads with :func:`cbir_utils.engine.models.load_checkpoint` alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cbir_utils.config import AUGMENTATIONS as AUGMENTATION_NAMES
from cbir_utils.config import (
    BACKBONE,
    BACKBONES,
    POOLINGS,
    RESIZES,
    WEIGHTS,
    Param,
    check_settings,
    setting,
)
from cbir_utils.engine import models
from cbir_utils.errors import InputError
from cbir_utils.evaluation.metrics import classification_metrics
from cbir_utils.io import save_csv
from cbir_utils.learning import fast_finetune as F
from cbir_utils.sources.augment import press_augment
from cbir_utils.sources.data import UNLABELLED, Collection, ImageDataset, Preprocess

# history.csv: one row per epoch and split. ``loss`` is, for "train", the optimised loss
# averaged over the batches as they were seen and, for "val", plain cross-entropy in eval
# mode. ``seconds``: that phase's time.
HISTORY_COLUMNS = (
    "epoch",
    "stage",
    "split",
    "loss",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "lr",
    "seconds",
)
# Config fields that may change between an interrupted run and its resumption.
_RESUME_IGNORED = ("device", "num_workers")


# --------------------------------------------------------------------------- augmentation


AUGMENTATIONS: dict[str, Callable[[Image.Image], Image.Image] | None] = {
    "none": None,
    "press": press_augment,
}
"""Training augmentations by name (``TrainConfig.augment``).

Each is a function ``PIL.Image (RGB, as decoded) -> PIL.Image`` applied to training images
only, *before* the preprocessing (gray, descreen, resize, normalise), so a simulated halftone
screen is then descreened exactly as real scans are. Draw randomness from ``random``
or ``np.random``: both are seeded per image draw from ``(seed, epoch, draw)``, so runs are
reproducible whatever ``num_workers`` and however often they were interrupted.
Functions must be module-level (picklable) for ``num_workers > 0``. The names are
:data:`cbir_utils.config.AUGMENTATIONS`'s; to use another function under one of them::

    from cbir_utils.learning import training
    training.AUGMENTATIONS["press"] = my_press_augmentation
"""
assert tuple(AUGMENTATIONS) == AUGMENTATION_NAMES


class _SeededDataset(torch.utils.data.Dataset):
    """Training images indexed by ``(draw, index)``; ``random``/``np.random`` are seeded from
    ``(epoch_seed, draw)`` before each image is transformed, so augmentations do not depend on
    ``num_workers`` (nor on whether a run was resumed)."""

    def __init__(self, base: ImageDataset) -> None:
        self.base = base
        self.epoch_seed = 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        draw, i = key
        s = _epoch_seed(self.epoch_seed, draw)
        random.seed(s)
        np.random.seed(s % 2**32)
        return self.base[i]


class _DrawSampler(torch.utils.data.Sampler):
    """A fixed sequence of ``(draw, index)`` pairs, drawn once per epoch.

    The order is fixed at construction (not when iterated), so the DataLoader may create
    its iterator any number of times, with or without worker processes, and see the same order.
    """

    def __init__(self, order: Sequence[int]) -> None:
        self.order = [int(i) for i in order]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(enumerate(self.order))

    def __len__(self) -> int:
        return len(self.order)


class _TrainTransform:
    """Augmentation followed by the preprocessing (picklable for DataLoader workers)."""

    def __init__(self, augment: Callable[[Image.Image], Image.Image] | None, pre: Preprocess):
        self.augment = augment
        self.pre = pre

    def __call__(self, im: Image.Image) -> torch.Tensor:
        if self.augment is not None:
            im = self.augment(im)
        return self.pre(im)


# --------------------------------------------------------------------------- configuration


@dataclass
class TrainConfig:
    """Fine-tuning parameters; the defaults are notebook 02's, the study's in ``paper.yaml``.

    ``stages``: epochs run one after the other on one model and optimiser; ``stage_lrs`` a
    rate per stage (``None``: ``lr``); ``head_lr`` the new head's rate, scaled likewise (a head
    from random weights needs a larger step); ``augment`` a key of :data:`AUGMENTATIONS`.
    """

    backbone: str = setting(BACKBONE, Param("str", choices=tuple(BACKBONES)))
    weights: str = setting(WEIGHTS, Param("str"))
    pooling: str = setting("gem", Param("str", choices=POOLINGS))
    image_size: int = setting(288, Param("int", low=32))
    resize: str = setting("letterbox", Param("str", choices=RESIZES))
    grayscale: bool = setting(True, Param("bool"))
    descreen: float = setting(3.0, Param("float", low=0.0))
    lr: float = setting(1e-3, Param("float", low=0.0, low_open=True))
    batch_size: int = setting(32, Param("int", low=1))
    stages: tuple[int, ...] = setting((30, 50, 50), Param("ints", low=1))
    stage_lrs: tuple[float, ...] | None = setting(
        None, Param("floats", optional=True, low=0.0, low_open=True)
    )
    head_lr: float | None = setting(None, Param("float", optional=True, low=0.0, low_open=True))
    augment: str = setting("press", Param("str", choices=AUGMENTATION_NAMES))
    seed: int = setting(0, Param("int"))
    num_workers: int = setting(0, Param("int", low=0))
    device: str | None = setting(None, Param("str", optional=True))

    def __post_init__(self) -> None:
        if isinstance(self.stages, int):
            self.stages = (self.stages,)
        check_settings(self)  # each field as its Param says
        if self.stage_lrs is not None and len(self.stage_lrs) != len(self.stages):
            raise InputError(
                f"stage_lrs has {len(self.stage_lrs)} value(s) but stages has "
                f"{len(self.stages)}; give one learning rate per stage, or None."
            )

    @property
    def epochs(self) -> int:
        """Total number of epochs over all stages."""
        return sum(self.stages)

    def stage_of(self, epoch: int) -> int:
        """1-based stage of a 1-based global epoch."""
        end = 0
        for i, n in enumerate(self.stages, start=1):
            end += n
            if epoch <= end:
                return i
        raise InputError(f"Epoch {epoch} is beyond the {self.epochs} epochs of {self.stages}.")

    def lr_of(self, stage: int) -> float:
        """Learning rate of a 1-based stage."""
        return self.lr if self.stage_lrs is None else self.stage_lrs[stage - 1]

    def preprocess(self) -> Preprocess:
        """The (un-augmented) preprocessing of this configuration."""
        return models.preprocess_for(
            self.backbone, self.image_size, self.resize, self.grayscale, self.descreen
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples as lists); stored in every checkpoint's meta."""
        d = asdict(self)
        d["stages"] = list(self.stages)
        d["stage_lrs"] = None if self.stage_lrs is None else list(self.stage_lrs)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Rebuild a config from :meth:`to_dict` output (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclass
class TrainResult:
    """What :func:`train` produced: ``best.pt`` (best validation macro-F1) and ``last.pt``, the
    per-epoch ``history`` (:data:`HISTORY_COLUMNS`), the classes, ``best_epoch`` (1-based).
    """

    best_checkpoint: Path
    last_checkpoint: Path
    history: pd.DataFrame
    classes: list[str]
    best_epoch: int
    seconds: float
    completed: bool = field(default=True)
    method: str = "train"

    def summary(self) -> str:
        """One line for the notebook: what was fitted, how long it took."""
        n = len(self.classes)
        if self.method == "train":
            return (
                f"{n} classes; best epoch {self.best_epoch}; "
                f"{self.seconds / 60:.1f} min of training"
            )
        if self.method == "head":
            epochs = int(self.history["epoch"].max())
            return (
                f"{n} classes; frozen backbone, projection head and classifier trained for "
                f"{epochs} epochs on its descriptors (best epoch {self.best_epoch}) in "
                f"{self.seconds:.1f} s, views included"
            )
        return (
            f"{n} classes; frozen backbone, projection {self.method} fitted on its descriptors "
            f"in {self.seconds:.1f} s (no epochs)"
        )


def finetune(
    config: TrainConfig,
    collection: Collection,
    split: pd.DataFrame,
    out_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    **train_kwargs: Any,
) -> TrainResult:
    """Fine-tune ``config.backbone`` the way it can be: notebook 02's entry point.

    A PyTorch backbone is trained by :func:`train`; a frozen ONNX one (``sscd``,
    ``sscd_distilled``) cannot be back-propagated through, so a projection of its descriptors
    is learned instead (:func:`cbir_utils.learning.fast_finetune.fast_finetune`).
    """
    if models.is_trainable(config.backbone):
        return train(config, collection, split, out_dir, progress=progress, **train_kwargs)

    res = F.fast_finetune(
        F.FastConfig.from_train_config(config), collection, split, out_dir, cache_dir, progress
    )
    history = res.history if res.history is not None else pd.DataFrame()
    return TrainResult(
        best_checkpoint=res.checkpoint,
        last_checkpoint=res.checkpoint.with_name("last.pt"),
        history=history.reindex(columns=list(HISTORY_COLUMNS)),
        classes=res.classes,
        best_epoch=res.best_epoch,
        seconds=res.seconds,
        method="head" if res.history is not None else res.method,
    )


def classification_report(
    checkpoint: str | os.PathLike,
    collection: Collection,
    split: pd.DataFrame,
    splits: Sequence[str] = ("val", "test"),
    batch_size: int = 32,
    progress: bool = False,
) -> tuple[pd.DataFrame, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``(table, predictions)``: accuracy and macro precision/recall/F1 of a checkpoint on each
    split (images of its classes only), and ``{split: (y_true, y_pred)}``.
    """
    model, meta, _ = models.load_checkpoint(checkpoint)
    class_id = {c: i for i, c in enumerate(meta["classes"])}
    rows, preds = [], {}
    pre = models.preprocess_from_meta(meta)
    for name in splits:
        part = split[(split["split"] == name) & split["scene"].isin(class_id)]
        y_true = part["scene"].map(class_id).to_numpy(dtype=np.int64)
        paths = [collection.root / r for r in part["relpath"]]
        y_pred = (
            predict(model, paths, pre, batch_size=batch_size, progress=progress)
            if len(paths)
            else np.zeros(0, dtype=np.int64)
        )
        preds[name] = (y_true, y_pred)
        rows.append({"split": name, "n": len(part), **classification_scores(y_true, y_pred)})
    return pd.DataFrame(rows), preds


# --------------------------------------------------------------------------- helpers


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([int(seed) % 2**32, int(epoch)]).generate_state(1)[0])


def _seed_everything(s: int) -> torch.Generator:
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    g = torch.Generator()
    g.manual_seed(s)
    return g


@contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic kernels while training; the global settings are restored afterwards."""
    was = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_det = torch.backends.cudnn.deterministic
    cudnn_bench = torch.backends.cudnn.benchmark
    try:
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        elif device.type == "cuda":
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=was_warn)
        torch.backends.cudnn.deterministic = cudnn_det
        torch.backends.cudnn.benchmark = cudnn_bench


def classification_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 with history-column names; NaN when empty.

    See :func:`cbir_utils.evaluation.metrics.classification_metrics` for the definitions.
    """
    if np.asarray(y_true).size == 0:
        return {"accuracy": math.nan, "precision": math.nan, "recall": math.nan, "f1": math.nan}
    m = classification_metrics(y_true, y_pred)
    return {k.removeprefix("macro_"): v for k, v in m.items()}


def _data_key(train: pd.DataFrame, val: pd.DataFrame, classes: list[str]) -> str:
    blob = json.dumps(
        {
            "classes": classes,
            "train": sorted(zip(train["relpath"], train["scene"], strict=False)),
            "val": sorted(zip(val["relpath"], val["scene"], strict=False)),
        }
    ).encode()
    return hashlib.sha1(blob).hexdigest()[:16]


# Fields added after the first release: a run saved without them used their defaults.
_LATER_DEFAULTS = {"head_lr": None}
# Fields removed since (experiments no default used): a run saved at these values is this
# configuration's; at another value it is not.
_RETIRED = {"optimizer": "adam", "loss": "ce", "class_balance": "none", "freeze": "none",
            "metric_loss": "none", "metric_weight": 1.0, "metric_margin": None, "pk_views": 2}  # fmt: skip


def _comparable(config_dict: dict[str, Any]) -> dict[str, Any]:
    d = {**_LATER_DEFAULTS, **config_dict}
    d = {k: v for k, v in d.items() if not (k in _RETIRED and v == _RETIRED[k])}
    return {k: v for k, v in d.items() if k not in _RESUME_IGNORED}


def _resolve_split(
    collection: Collection, split: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and val rows (relpath, path, scene) of labelled images."""
    missing = {"relpath", "split"} - set(split.columns)
    if missing:
        raise InputError(f"The split frame lacks column(s) {sorted(missing)}.")
    items = collection.items[["relpath", "path", "scene"]]
    unknown = set(split["relpath"]) - set(items["relpath"])
    if unknown:
        raise InputError(
            f"The split names {len(unknown)} image(s) that are not in the collection "
            f"{collection.root} (e.g. {sorted(unknown)[0]!r}); make the split for this collection."
        )
    merged = split[["relpath", "split"]].merge(items, on="relpath", how="left")
    merged = merged[merged["scene"] != UNLABELLED]
    train = merged[merged["split"] == "train"].reset_index(drop=True)
    val = merged[merged["split"] == "val"].reset_index(drop=True)
    return train, val


def _make_optimizer(config: TrainConfig, model: models.RetrievalNet) -> torch.optim.Optimizer:
    """The optimiser; with ``head_lr`` the head is its own group (``lr_scale`` = head_lr / lr)."""
    head = {id(p) for p in model.head.parameters()} if config.head_lr is not None else set()
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in head]
    groups = [{"params": body, "lr_scale": 1.0}]
    if head:
        tops = [p for p in model.head.parameters() if p.requires_grad]
        groups.append({"params": tops, "lr_scale": config.head_lr / config.lr})
    return torch.optim.Adam([g for g in groups if g["params"]], lr=config.lr)


def _to_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


# --------------------------------------------------------------------------- training


@dataclass
class _TrainData:
    """The images a run trains and validates on, as class ids."""

    train: pd.DataFrame
    val: pd.DataFrame
    classes: list[str]
    y_train: np.ndarray
    y_val: np.ndarray
    key: str  # identifies the classes and images (a resumed run must have the same)


def _train_data(collection: Collection, split: pd.DataFrame) -> _TrainData:
    """The classes (sorted scenes with a ``train`` image) and the labelled images."""
    train_df, val_df = _resolve_split(collection, split)
    classes = sorted(set(train_df["scene"]))
    if not len(train_df):
        raise InputError("The split has no labelled 'train' images: nothing to fine-tune on.")
    if len(classes) < 2:
        raise InputError(f"Need at least 2 scenes with training images, got {classes}.")
    class_id = {c: i for i, c in enumerate(classes)}
    unseen = ~val_df["scene"].isin(class_id)
    if unseen.any():
        warnings.warn(
            f"{int(unseen.sum())} validation image(s) of scenes without training images are "
            "skipped (a classifier cannot predict them).",
            stacklevel=3,
        )
    val_df = val_df[~unseen].reset_index(drop=True)
    return _TrainData(
        train_df,
        val_df,
        classes,
        train_df["scene"].map(class_id).to_numpy(dtype=np.int64),
        val_df["scene"].map(class_id).to_numpy(dtype=np.int64),
        _data_key(train_df, val_df, classes),
    )


def _saved_run(
    last_path: Path, cfg_dict: dict[str, Any], data_key: str, resume: bool
) -> dict[str, Any] | None:
    """The run's ``last.pt`` to resume from, after checking it is this run's; None to start.

    Raises:
        ValueError: The folder holds a run of another configuration or on other data.
    """
    if not last_path.exists():
        return None
    out_dir = last_path.parent.parent
    saved = models.safe_load(last_path)
    saved_cfg = saved.get("meta", {}).get("train_config", {})
    if _comparable(saved_cfg) != _comparable(cfg_dict):
        diff = sorted(
            k
            for k in set(saved_cfg) | set(cfg_dict)
            if k not in _RESUME_IGNORED and saved_cfg.get(k) != cfg_dict.get(k)
        )
        shown = ", ".join(f"{k}: {saved_cfg.get(k)!r} -> {cfg_dict.get(k)!r}" for k in diff)
        raise InputError(
            f"{out_dir} holds a training run with another configuration ({shown}). "
            "Choose another output folder for this configuration (e.g. a new RUN_NAME); "
            "nothing was overwritten."
        )
    if saved.get("data_key") != data_key:
        raise InputError(
            f"{out_dir} holds a training run on other images or another split (its classes "
            "or train/val images differ). Choose another output folder; nothing was overwritten."
        )
    if resume:
        return saved
    warnings.warn(f"resume=False: restarting the run in {out_dir} from scratch.", stacklevel=3)
    for p in last_path.parent.glob("*.pt"):
        p.unlink()
    return None


def _build(config: TrainConfig, n_classes: int, device: torch.device, resumed: bool):
    """The network and the optimiser, on ``device``."""
    _seed_everything(_epoch_seed(config.seed, 0))
    model = models.build_model(
        config.backbone,
        # a resumed run loads its own weights: no ImageNet download needed
        weights="none" if resumed else config.weights,
        pooling=config.pooling,
        n_classes=n_classes,
    )
    model = model.to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    return model, _make_optimizer(config, model)


def _epoch_order(config: TrainConfig, y_train: np.ndarray, gen: torch.Generator) -> list[int]:
    """The training images of one epoch, shuffled."""
    return torch.randperm(len(y_train), generator=gen).tolist()


def _train_epoch(model, criterion, optimizer, loader, device, n_batches, desc):
    """One pass over ``loader``: (mean loss, true labels, predicted labels)."""
    model.train()
    loss_sum, n_seen, trues, preds = 0.0, 0, [], []
    bar = tqdm(islice(loader, n_batches), total=n_batches, desc=desc, disable=desc is None)
    for x, y, _ in bar:
        x, y = _to_input(x, device), y.to(device)
        optimizer.zero_grad(set_to_none=True)
        logits = model.head(model.descriptor(x))
        loss = criterion(logits, y)
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach()) * len(y)
        n_seen += len(y)
        trues.append(y.cpu().numpy())
        preds.append(logits.detach().argmax(1).cpu().numpy())
        bar.set_postfix(loss=f"{loss_sum / n_seen:.4f}")
    bar.close()
    return loss_sum / max(n_seen, 1), np.concatenate(trues), np.concatenate(preds)


def _row(epoch: int, stage: int, split: str, loss: float, trues, preds, lr: float, t0: float):
    return {
        "epoch": epoch,
        "stage": stage,
        "split": split,
        "loss": loss,
        **classification_scores(trues, preds),
        "lr": lr,
        "seconds": time.perf_counter() - t0,
    }


def train(
    config: TrainConfig,
    collection: Collection,
    split: pd.DataFrame,
    out_dir: str | os.PathLike,
    resume: bool = True,
    progress: bool = True,
    max_batches: int | None = None,
    stop_after_epochs: int | None = None,
) -> TrainResult:
    """Fine-tune ``config.backbone`` as a classifier of the training split's scenes.

    Classes are the sorted scenes with a ``train`` image; other ``val`` images are ignored.
    After every epoch: validation, ``history.csv`` and ``last.pt`` written atomically, ``best.pt``
    when validation macro-F1 improves. ``resume`` continues after ``last.pt`` (``False``
    starts again); ``stop_after_epochs`` stops cleanly as if interrupted; ``max_batches`` caps
    batches per epoch (smoke tests). A folder holding another configuration's run is an error.
    """
    if max_batches is not None and (not _is_int(max_batches) or max_batches <= 0):
        raise InputError(f"max_batches must be a positive integer or None, got {max_batches!r}.")
    if stop_after_epochs is not None and (not _is_int(stop_after_epochs) or stop_after_epochs < 0):
        raise InputError(f"stop_after_epochs must be >= 0 or None, got {stop_after_epochs!r}.")
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    data = _train_data(collection, split)
    cfg_dict = config.to_dict()
    saved = _saved_run(last_path, cfg_dict, data.key, resume)

    device = torch.device(config.device) if config.device else models.default_device()
    model, optimizer = _build(config, len(data.classes), device, saved is not None)
    history: list[dict[str, Any]] = []
    start_epoch = 1
    best = {"epoch": 0, "f1": -math.inf, "loss": math.inf}
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        history = list(saved["history"])
        start_epoch = int(saved["epoch"]) + 1
        best = dict(saved["best"])
        del saved

    pre = config.preprocess()
    transform = _TrainTransform(AUGMENTATIONS[config.augment], pre)
    train_ds = _SeededDataset(ImageDataset(data.train["path"].tolist(), transform, data.y_train))
    val_ds = ImageDataset(data.val["path"].tolist(), pre, data.y_val)
    criterion = nn.CrossEntropyLoss()
    val_criterion = nn.CrossEntropyLoss(reduction="sum")
    if not len(val_ds):
        warnings.warn(
            "No validation images of the training scenes: best.pt will be the last epoch.",
            stacklevel=2,
        )

    epochs_run = 0
    with _deterministic(device):
        for epoch in range(start_epoch, config.epochs + 1):
            if stop_after_epochs is not None and epochs_run >= stop_after_epochs:
                break
            stage = config.stage_of(epoch)
            lr = config.lr_of(stage)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            epoch_seed = _epoch_seed(config.seed, epoch)
            gen = _seed_everything(epoch_seed)
            train_ds.epoch_seed = epoch_seed
            loader = DataLoader(
                train_ds,
                batch_size=config.batch_size,
                sampler=_DrawSampler(_epoch_order(config, data.y_train, gen)),
                num_workers=config.num_workers,
                pin_memory=device.type == "cuda",
            )
            label = f"Stage {stage}/{len(config.stages)} · epoch {epoch}/{config.epochs}"
            t0 = time.perf_counter()
            n_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
            loss, trues, preds = _train_epoch(
                model, criterion, optimizer, loader, device, n_batches,
                f"{label} train" if progress else None,
            )  # fmt: skip
            train_row = _row(epoch, stage, "train", loss, trues, preds, lr, t0)
            t0 = time.perf_counter()
            val_loss, vt, vp = _evaluate(
                model, val_ds, val_criterion, config, device, max_batches, progress, f"{label} val"
            )
            val_row = _row(epoch, stage, "val", val_loss, vt, vp, lr, t0)
            history += [train_row, val_row]
            epochs_run += 1
            best = _save_epoch(
                config, data, model, optimizer, out_dir, epoch, history, best, val_row
            )
            if progress:
                tqdm.write(
                    f"{label}: train loss {train_row['loss']:.4f} f1 {train_row['f1']:.3f} | "
                    f"val loss {val_row['loss']:.4f} f1 {val_row['f1']:.3f}"
                    + (" (best)" if best["epoch"] == epoch else "")
                )

    frame = _history_frame(history)
    last_epoch = int(frame["epoch"].max()) if len(frame) else 0
    return TrainResult(
        best_checkpoint=best_path,
        last_checkpoint=last_path,
        history=frame,
        classes=data.classes,
        best_epoch=int(best["epoch"]),
        seconds=float(frame["seconds"].sum()) if len(frame) else 0.0,
        completed=last_epoch >= config.epochs,
    )


def _save_epoch(config, data, model, optimizer, out_dir, epoch, history, best, val_row) -> dict:
    """The epoch's checkpoints: stage / best / history first, ``last.pt`` last (it marks
    the epoch done). Returns the best epoch so far."""
    ckpt_dir = out_dir / "checkpoints"
    stage = config.stage_of(epoch)
    meta = models.model_meta(
        config.backbone, config.weights, config.pooling, config.image_size,
        classes=data.classes, resize=config.resize, grayscale=config.grayscale,
        descreen=config.descreen, train_config=config.to_dict(), epoch=epoch, stage=stage,
    )  # fmt: skip
    scores = {"val_f1": val_row["f1"], "val_loss": val_row["loss"]}
    if epoch == sum(config.stages[:stage]):
        models.save_checkpoint(
            ckpt_dir / f"stage{stage}.pt", model, meta, epoch=epoch, stage=stage, **scores
        )
    if _is_better(val_row, best):
        best = {"epoch": epoch, "f1": val_row["f1"], "loss": val_row["loss"]}
        models.save_checkpoint(
            ckpt_dir / "best.pt", model, meta, epoch=epoch, stage=stage, **scores
        )
    save_csv(out_dir / "history.csv", _history_frame(history))
    models.save_checkpoint(
        ckpt_dir / "last.pt", model, meta, optimizer=optimizer.state_dict(), epoch=epoch,
        stage=stage, history=history, best=best, data_key=data.key, **scores,
    )  # fmt: skip
    return best


def _is_better(val_row: dict[str, Any], best: dict[str, Any]) -> bool:
    f1, loss = val_row["f1"], val_row["loss"]
    if math.isnan(f1):  # no validation data: keep the latest epoch
        return True
    if f1 != best["f1"]:
        return f1 > best["f1"]
    return loss < best["loss"]


def _history_frame(history: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(history, columns=list(HISTORY_COLUMNS))


def _evaluate(
    model: models.RetrievalNet,
    dataset: ImageDataset,
    criterion: nn.Module,
    config: TrainConfig,
    device: torch.device,
    max_batches: int | None,
    progress: bool,
    desc: str,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Summed-loss criterion over ``dataset`` in eval mode: (mean loss, y_true, y_pred)."""
    if not len(dataset):
        return math.nan, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=False,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
    )
    n_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
    model.eval()
    loss_sum, trues, preds = 0.0, [], []
    with torch.inference_mode():
        bar = tqdm(
            islice(loader, n_batches), total=n_batches, desc=desc, disable=not progress, leave=False
        )
        for x, y, _ in bar:
            x, y = _to_input(x, device), y.to(device)
            logits = model(x)
            loss_sum += float(criterion(logits, y))
            trues.append(y.cpu().numpy())
            preds.append(logits.argmax(1).cpu().numpy())
        bar.close()
    t = np.concatenate(trues)
    return loss_sum / len(t), t, np.concatenate(preds)


# --------------------------------------------------------------------------- inference


def predict(
    model: models.RetrievalNet,
    paths: Sequence[str | os.PathLike],
    preprocess: Preprocess,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    progress: bool = True,
    num_workers: int = 0,
) -> np.ndarray:
    """Predicted class index of each image (argmax of the logits), in eval mode."""
    if model.head is None:
        raise InputError(
            "predict() needs a model with a classifier head (a fine-tuned checkpoint)."
        )
    device = torch.device(device) if device is not None else models.default_device()
    model = model.to(device).eval()
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    loader = DataLoader(
        ImageDataset(paths, preprocess),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for x, _, _ in tqdm(loader, desc="Predicting", disable=not progress):
            out.append(model(_to_input(x, device)).argmax(1).cpu().numpy())
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)
