"""Metric-learning objectives on the image descriptor.

Cross-entropy over scene classes (the study's objective) teaches the network to tell the
*training* scenes apart; retrieval of unseen scenes needs descriptors whose cosine is high
for two printings of one photograph and low otherwise, whatever the scene. The losses here
act on the pooled descriptor directly (they L2-normalise it themselves):

* :func:`contrastive_loss`: pairs in the batch; positives pulled together, negatives pushed
  beyond a margin (Radenović et al., the standard loss of CNN image retrieval).
* :func:`triplet_loss`: batch-hard triplets (hardest positive and negative of each anchor).
* :class:`ArcFace`: additive angular margin on a cosine classifier (Deng et al.); works with
  one image per class in a batch, which suits small scenes of 2 or 3 printings.

Labels are scene indices; pair-based losses need at least two images of a scene in a batch
(see ``training.TrainConfig.class_balance = "pk_sampler"``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError

METRIC_LOSSES = ("contrastive", "triplet", "arcface")


def _pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    labels = labels.view(-1)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def _check(embeddings: torch.Tensor, labels: torch.Tensor) -> None:
    if embeddings.ndim != 2:
        raise InputError(f"embeddings must be (N, D), got shape {tuple(embeddings.shape)}.")
    if labels.ndim != 1 or len(labels) != len(embeddings):
        raise InputError(
            f"labels must be (N,) with N = {len(embeddings)}, got shape {tuple(labels.shape)}."
        )


def contrastive_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.7
) -> torch.Tensor:
    """Contrastive loss over every pair of the batch.

    With ``d`` the Euclidean distance of the L2-normalised descriptors, a positive pair
    (same label) costs ``d ** 2 / 2`` and a negative pair ``max(0, margin - d) ** 2 / 2``;
    the result is the mean over positive pairs plus the mean over negative pairs (so a batch
    with many negatives does not drown its few positives). A batch without positive pairs
    contributes only its negative term; a batch with neither gives 0.

    Args:
        embeddings: ``(N, D)`` descriptors (normalised here).
        labels: ``(N,)`` scene indices.
        margin: Distance beyond which negatives cost nothing (0 to 2).
    """
    _check(embeddings, labels)
    x = F.normalize(embeddings, dim=1)
    d = torch.cdist(x, x).clamp(min=0)
    pos, neg = _pair_masks(labels)
    zero = embeddings.sum() * 0.0
    lp = 0.5 * d[pos].pow(2).mean() if pos.any() else zero
    ln = 0.5 * F.relu(margin - d[neg]).pow(2).mean() if neg.any() else zero
    return lp + ln


def triplet_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.2
) -> torch.Tensor:
    """Batch-hard triplet loss: ``mean(max(0, d(a, hardest p) - d(a, hardest n) + margin))``.

    Only anchors with at least one positive and one negative in the batch count; 0 when none.

    Args:
        embeddings: ``(N, D)`` descriptors (normalised here).
        labels: ``(N,)`` scene indices.
        margin: Required gap between the positive and the negative distance.
    """
    _check(embeddings, labels)
    x = F.normalize(embeddings, dim=1)
    d = torch.cdist(x, x).clamp(min=0)
    pos, neg = _pair_masks(labels)
    valid = pos.any(1) & neg.any(1)
    if not valid.any():
        return embeddings.sum() * 0.0
    hardest_pos = torch.where(pos, d, torch.zeros_like(d)).amax(1)
    hardest_neg = torch.where(neg, d, torch.full_like(d, math.inf)).amin(1)
    return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()


class ArcFace(nn.Module):
    """Additive angular margin loss on a cosine classifier.

    ``logit_j = scale * cos(theta_j + margin * [j == y])`` with ``theta_j`` the angle between
    the normalised descriptor and the normalised weight of class ``j``; cross-entropy on these.

    Args:
        dim: Descriptor size.
        n_classes: Number of scenes.
        scale: Logit scale ``s``.
        margin: Angular margin ``m`` (radians).
    """

    def __init__(self, dim: int, n_classes: int, scale: float = 30.0, margin: float = 0.3):
        super().__init__()
        if n_classes < 2:
            raise InputError(f"ArcFace needs at least 2 classes, got {n_classes}.")
        self.weight = nn.Parameter(torch.empty(n_classes, dim))
        nn.init.xavier_uniform_(self.weight)
        self.scale = float(scale)
        self.margin = float(margin)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine of each descriptor with each class weight, ``(N, n_classes)``."""
        return F.normalize(embeddings, dim=1) @ F.normalize(self.weight, dim=1).T

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Margin-penalised, scaled logits (training)."""
        cos = self.cosine(embeddings).clamp(-1 + 1e-7, 1 - 1e-7)
        target = F.one_hot(labels, cos.shape[1]).bool()
        theta = torch.acos(cos)
        # no margin where theta + m would pass pi (keeps the target logit monotonic)
        with_margin = torch.where(
            theta + self.margin < math.pi, torch.cos(theta + self.margin), cos
        )
        return self.scale * torch.where(target, with_margin, cos)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the ArcFace logits."""
        _check(embeddings, labels)
        return F.cross_entropy(self.logits(embeddings, labels), labels)


def metric_loss(
    name: str, embeddings: torch.Tensor, labels: torch.Tensor, margin: float | None = None
) -> torch.Tensor:
    """A pair-based metric loss by name (``contrastive`` or ``triplet``), default margins."""
    if name == "contrastive":
        return contrastive_loss(embeddings, labels, 0.7 if margin is None else margin)
    if name == "triplet":
        return triplet_loss(embeddings, labels, 0.2 if margin is None else margin)
    raise InputError(
        f"Unknown pair loss {name!r}; choose 'contrastive' or 'triplet' ('arcface' is a module)."
    )
