"""Metric-learning losses: hand-computed values and the direction of their gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cbir_utils import losses


def _unit(*angles_deg: float) -> torch.Tensor:
    a = torch.tensor(angles_deg, dtype=torch.float64) * math.pi / 180
    return torch.stack([torch.cos(a), torch.sin(a)], dim=1)


def test_contrastive_loss_by_hand():
    # three unit vectors at 0, 60 and 180 degrees; the first two share a label
    x = _unit(0, 60, 180)
    y = torch.tensor([0, 0, 1])
    d01, d02, d12 = 1.0, 2.0, math.sqrt(3.0)  # chord lengths 2 sin(angle / 2)
    margin = 1.9
    pos = 0.5 * d01**2
    neg = 0.5 * (max(0.0, margin - d02) ** 2 + max(0.0, margin - d12) ** 2) / 2
    got = losses.contrastive_loss(x, y, margin=margin)
    assert got.item() == pytest.approx(pos + neg, abs=1e-9)


def test_contrastive_loss_is_scale_invariant_and_zero_when_perfect():
    x = _unit(0, 0, 180, 180)
    y = torch.tensor([0, 0, 1, 1])
    assert losses.contrastive_loss(3.0 * x, y, margin=0.7).item() == pytest.approx(0.0, abs=1e-6)


def test_triplet_loss_batch_hard_by_hand():
    x = _unit(0, 90, 30, 180)
    y = torch.tensor([0, 0, 1, 1])
    chord = lambda deg: 2 * math.sin(math.radians(deg) / 2)  # noqa: E731
    m = 0.2
    per_anchor = [
        max(0.0, chord(90) - chord(30) + m),  # a=0: p=90deg away, hardest n=30deg
        max(0.0, chord(90) - chord(60) + m),  # a=1 (90): p=0, n: 30 -> 60deg, 180 -> 90deg
        max(0.0, chord(150) - chord(30) + m),  # a=2 (30): p=180 (150deg), n=0 (30deg)
        max(0.0, chord(150) - chord(90) + m),  # a=3 (180): p=30 (150deg), n=90 (90deg)
    ]
    got = losses.triplet_loss(x, y, margin=m)
    assert got.item() == pytest.approx(sum(per_anchor) / 4, abs=1e-9)


def test_pair_losses_without_positives_or_negatives():
    x = torch.randn(3, 8, requires_grad=True)
    assert losses.triplet_loss(x, torch.tensor([0, 1, 2])).item() == 0.0
    loss = losses.contrastive_loss(x, torch.tensor([0, 0, 0]))
    loss.backward()  # positives only: still differentiable
    assert x.grad is not None
    with pytest.raises(ValueError, match="labels"):
        losses.contrastive_loss(x, torch.tensor([0, 1]))


def test_gradient_step_pulls_positives_together():
    torch.manual_seed(0)
    x = torch.randn(6, 16, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    opt = torch.optim.SGD([x], lr=0.5)

    def gap() -> float:
        z = torch.nn.functional.normalize(x.detach(), dim=1)
        s = z @ z.T
        same = (y[:, None] == y[None, :]) & ~torch.eye(6, dtype=torch.bool)
        return (s[same].mean() - s[~same & ~torch.eye(6, dtype=torch.bool)].mean()).item()

    before = gap()
    for _ in range(30):
        opt.zero_grad()
        losses.contrastive_loss(x, y).backward()
        opt.step()
    assert gap() > before + 0.5


def test_arcface_margin_lowers_the_target_logit_only():
    head = losses.ArcFace(dim=2, n_classes=2, scale=10.0, margin=0.5)
    with torch.no_grad():
        head.weight.copy_(_unit(0, 90))
    x = _unit(30).float()
    logits = head.logits(x, torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(10 * math.cos(math.radians(30) + 0.5), abs=1e-5)
    assert logits[0, 1].item() == pytest.approx(10 * math.cos(math.radians(60)), abs=1e-5)
    loss = head(x, torch.tensor([0]))
    expected = -torch.log_softmax(logits, dim=1)[0, 0]
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    with pytest.raises(ValueError, match="2 classes"):
        losses.ArcFace(4, 1)


def test_metric_loss_by_name():
    x, y = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    assert torch.equal(losses.metric_loss("triplet", x, y), losses.triplet_loss(x, y))
    with pytest.raises(ValueError, match="Unknown"):
        losses.metric_loss("npair", x, y)


# --------------------------------------------------------------------------- training options


def test_pk_order_puts_pairs_of_each_scene_in_every_batch():
    from cbir_utils.training import _pk_order

    labels = np.array([0, 0, 0, 1, 2, 2, 3, 4, 4, 4, 4])
    gen = torch.Generator().manual_seed(0)
    order = _pk_order(labels, batch_size=4, views=2, gen=gen)
    assert len(order) == 12  # len(labels) rounded up to a multiple of views
    for b in range(0, len(order), 4):
        batch = labels[order[b : b + 4]]
        scenes, counts = np.unique(batch, return_counts=True)
        assert (counts % 2 == 0).all()  # every scene of the batch has a positive partner
    # a scene with one image is drawn twice (two augmentations of it); others without repeats
    pairs = [order[i : i + 2] for i in range(0, len(order), 2)]
    assert all(a != b or (labels == labels[a]).sum() == 1 for a, b in pairs)


def test_config_validates_metric_options():
    from cbir_utils.training import TrainConfig, _comparable

    with pytest.raises(ValueError, match="metric_loss"):
        TrainConfig(metric_loss="npair")
    with pytest.raises(ValueError, match="multiple"):
        TrainConfig(class_balance="pk_sampler", batch_size=31)
    with pytest.raises(ValueError, match="metric_weight"):
        TrainConfig(metric_weight=-1)
    # runs saved before these options existed resume as the defaults
    old = {k: v for k, v in TrainConfig().to_dict().items() if not k.startswith(("metric", "pk"))}
    assert _comparable(old) == _comparable(TrainConfig().to_dict())
    assert TrainConfig().metric_loss == "none" and TrainConfig().augment == "none"


def test_train_with_press_augmentation_metric_loss_and_arcface(tiny_collection, tmp_path):
    from cbir_utils import data, models, training

    coll = data.load_collection(tiny_collection)
    split = coll.items[["relpath", "scene"]].copy()
    split["split"] = ["val" if r.endswith("_2.jpg") else "train" for r in split["relpath"]]
    cfg = training.TrainConfig(
        backbone="resnet18",
        weights="none",
        image_size=64,
        batch_size=4,
        stages=(1,),
        pooling="gem",
        augment="press",
        class_balance="pk_sampler",
        metric_loss="triplet",
        loss="arcface",
        device="cpu",
    )
    res = training.train(cfg, coll, split, tmp_path, progress=False, max_batches=1)
    assert np.isfinite(res.history["loss"]).all()
    model, meta, _ = models.load_checkpoint(res.last_checkpoint)
    assert meta["train_config"]["metric_loss"] == "triplet"
    assert torch.count_nonzero(model.head.bias) == 0  # ArcFace's cosine classifier, no bias
