"""Backbones by name, pooling, checkpoints and the torchvision-on-CPU import."""

from __future__ import annotations

import pytest
import torch

from cbir_utils.engine import models


def test_torchvision_imports_on_cpu_torch():
    from cbir_utils._compat import import_torchvision

    tv = import_torchvision()
    assert hasattr(tv.models, "resnet152")


def test_unknown_names():
    with pytest.raises(ValueError, match="Unknown backbone 'vgg'.*resnet152"):
        models.build_model("vgg", "none")
    with pytest.raises(ValueError, match="Unknown pooling"):
        models.build_model("resnet18", "none", pooling="median")


def test_gem_p1_is_average_and_large_p_tends_to_max():
    x = torch.rand(2, 5, 4, 3) + 0.01
    assert torch.allclose(models.gem(x, 1.0), x.mean(dim=(-2, -1)), atol=1e-6)
    assert torch.allclose(models.gem(x, 200.0), x.amax(dim=(-2, -1)), rtol=0.05)
    # hand-computed: values 1 and 3 with p=2 -> sqrt((1 + 9) / 2) = sqrt(5)
    y = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)
    assert torch.allclose(models.gem(y, 2.0), torch.tensor([[5.0**0.5]]))


def test_lite0_offline_weights_and_descriptor(lite0):
    x = torch.randn(2, 3, 128, 96)
    d = lite0.descriptor(x)
    assert d.shape == (2, 1280)
    # pretrained: the ImageNet head gives confident, non-uniform logits on a real photo
    from cbir_utils.sources.data import Preprocess
    from tests.conftest import source_photo

    prep = Preprocess(224, grayscale=False, **models.normalisation_for("efficientnet_lite0"))
    net = lite0.trunk.net
    with torch.inference_mode():
        logits = net(prep(source_photo("chelsea")).unsqueeze(0))
    # ImageNet classes 281-285 are domestic cats
    assert 281 <= int(logits.argmax()) <= 285


def test_resnet_offline_error_names_both_options(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def refuse(*a, **k):
        raise OSError("no network")

    from cbir_utils._compat import import_torchvision

    tv = import_torchvision()
    monkeypatch.setattr(
        tv.models.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", refuse
    )
    with pytest.raises(models.WeightsUnavailableError, match="(?s)internet.*local|WEIGHTS="):
        models.build_model("resnet18", "imagenet")


def test_local_weights_file(tmp_path):
    from cbir_utils._compat import import_torchvision

    torch.manual_seed(1)
    tv_net = import_torchvision().models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(tv_net.state_dict(), path)
    loaded = models.build_model("resnet18", str(path))
    assert torch.equal(tv_net.conv1.weight, loaded.trunk[0].weight)
    with pytest.raises(FileNotFoundError):
        models.build_model("resnet18", str(tmp_path / "missing.pth"))


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    net = models.build_model("resnet18", "none", pooling="gem", n_classes=3).eval()
    meta = models.model_meta("resnet18", "none", "gem", 64, classes=["a", "b", "c"])
    path = models.save_checkpoint(tmp_path / "ck.pt", net, meta, epoch=4)
    rebuilt, meta2, ck = models.load_checkpoint(path)
    rebuilt.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(net.descriptor(x), rebuilt.descriptor(x), atol=1e-6)
        assert torch.allclose(net(x), rebuilt(x), atol=1e-6)
    assert meta2["classes"] == ["a", "b", "c"] and ck["epoch"] == 4
    # a checkpoint whose weights belong to another backbone is refused clearly
    bad = dict(meta, backbone="resnet50")
    models.save_checkpoint(tmp_path / "bad.pt", net, bad)
    with pytest.raises(ValueError, match="does not match backbone 'resnet50'"):
        models.load_checkpoint(tmp_path / "bad.pt")
