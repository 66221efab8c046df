"""Training the trainable part of a frozen network: a projection head and a classifier.

A frozen, quantised trunk (the ONNX SSCD models) cannot be back-propagated through, so what
notebook 02 trains is what sits on top of it (``shared/DOMAIN.md``): a linear projection of
the trunk's descriptor and a cosine classifier over the training scenes, with the study's
recipe (Adam, lr 0.001, cross-entropy, batch 32, epochs in stages of 30, 50 and 50). The
trunk's descriptors are computed once per view (the image and simulated reprints of it);
each epoch draws a fresh view of every training image from that pool, so the head sees many
degradations over its epochs. One epoch is a few milliseconds on a CPU.

The model is the checkpoint's: ``z = W (x / |x| - m)`` (:class:`cbir_utils.engine.models.Projection`)
and logits ``s cos(z, c_k)`` against one learned centre per scene (saved as the linear head
``s c_k / |c_k|``, whose arg-max is the same).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from cbir_utils.engine.features import torch_threads
from cbir_utils.evaluation.metrics import classification_metrics

HEAD_SCALE = 16.0
"""Logits are ``HEAD_SCALE`` times the cosine to each scene's centre."""
HISTORY_COLUMNS = ("epoch", "stage", "split", "loss", "accuracy", "precision", "recall", "f1")


class HeadNet(nn.Module):
    """Projection ``W (x / |x| - m)`` and a cosine classifier over its unit-norm output."""

    def __init__(self, matrix: np.ndarray, mean: np.ndarray, centres: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.proj = nn.Parameter(torch.as_tensor(matrix, dtype=torch.float32).clone())
        self.centres = nn.Parameter(torch.as_tensor(centres, dtype=torch.float32).clone())

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm projected descriptors."""
        return F.normalize((F.normalize(x, dim=-1) - self.mean) @ self.proj.T, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return HEAD_SCALE * self.embed(x) @ F.normalize(self.centres, dim=-1).T

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(matrix, mean, head weight)`` as the checkpoint stores them."""
        head = HEAD_SCALE * F.normalize(self.centres.detach(), dim=-1)
        return (self.proj.detach().numpy().copy(), self.mean.numpy().copy(), head.numpy().copy())


@dataclass
class HeadResult:
    """A trained head: its best and last states and one history row per epoch and split."""

    best: HeadNet
    last: HeadNet
    best_epoch: int
    history: pd.DataFrame = field(repr=False)
    seconds: float = 0.0


def _scores(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 under history.csv's names (as
    :func:`cbir_utils.learning.training.classification_scores`, which this module sits below)."""
    m = classification_metrics(y, pred)
    return {k.removeprefix("macro_"): float(v) for k, v in m.items()}


def train_head(
    views: Sequence[np.ndarray],
    labels: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    init: HeadNet,
    stages: Sequence[int] = (30, 50, 50),
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> HeadResult:
    """Train a copy of ``init`` on ``views`` (``V`` arrays ``(N, D)``: the trunk's descriptors of
    each training image, then of its reprints); validate every epoch on ``val_x``, ``val_y``.

    ``best`` has the best validation macro-F1 (ties: lower loss), as the study chose. Runs on
    one thread: the same history for a seed under any load, and as fast at these sizes.
    """
    with torch_threads(1):
        return _train(views, labels, val_x, val_y, init, stages, lr, batch_size, seed, progress)


def _train(views, labels, val_x, val_y, init, stages, lr, batch_size, seed, progress):
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pool = torch.as_tensor(np.stack(views), dtype=torch.float32)  # (V, N, D)
    y = torch.as_tensor(np.array(labels), dtype=torch.long)
    vx = torch.as_tensor(val_x, dtype=torch.float32)
    vy = np.asarray(val_y, dtype=np.int64)
    net = copy.deepcopy(init)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    n = pool.shape[1]
    rows, best, best_key, best_epoch, epoch = [], copy.deepcopy(net), None, 0, 0
    total = int(sum(stages))
    with tqdm(total=total, desc="training the head", unit="epoch", disable=not progress) as bar:
        for stage, n_epochs in enumerate(stages, start=1):
            for _ in range(int(n_epochs)):
                epoch += 1
                net.train()
                pick = torch.as_tensor(rng.integers(0, len(pool), size=n))  # fresh views
                order = torch.as_tensor(rng.permutation(n))
                loss_sum, preds = 0.0, np.zeros(n, dtype=np.int64)
                for s in range(0, n, batch_size):
                    idx = order[s : s + batch_size]
                    x = pool[pick[idx], idx]
                    logits = net(x)
                    loss = F.cross_entropy(logits, y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    loss_sum += loss.item() * len(idx)
                    preds[idx.numpy()] = logits.argmax(1).numpy()
                train_row = {"loss": loss_sum / n, **_scores(labels, preds)}
                net.eval()
                with torch.no_grad():
                    v_logits = net(vx)
                    v_loss = float(F.cross_entropy(v_logits, torch.as_tensor(vy)))
                val_row = {"loss": v_loss, **_scores(vy, v_logits.argmax(1).numpy())}
                for split, row in (("train", train_row), ("val", val_row)):
                    rows.append({"epoch": epoch, "stage": stage, "split": split, **row})
                key = (val_row["f1"], -v_loss)
                if best_key is None or key > best_key:
                    best, best_key, best_epoch = copy.deepcopy(net), key, epoch
                bar.update(1)
    history = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    return HeadResult(best, net, best_epoch, history, time.perf_counter() - t0)
