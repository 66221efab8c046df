"""Collections, image decoding, preprocessing and the train/val/test split.

A collection is either a folder with one sub-folder per scene (images found
recursively inside it), or a CSV manifest with ``path`` and ``scene`` columns (paths
relative to the manifest's folder). Images are decoded with Pillow.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageFilter, ImageOps

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".jp2", ".ppm", ".pgm"}
)
SPLITS = ("train", "val", "test", "heldout")
UNLABELLED = ""


@dataclass
class Collection:
    """An image collection: ``items`` has columns ``relpath``, ``path`` (absolute) and ``scene``.

    ``scene`` is ``""`` for images without a scene label (distractors).
    """

    root: Path
    items: pd.DataFrame

    def __len__(self) -> int:
        return len(self.items)

    @property
    def paths(self) -> list[Path]:
        """Absolute image paths, in collection order."""
        return [Path(p) for p in self.items["path"]]

    @property
    def scenes(self) -> np.ndarray:
        """Scene label of every image (``""`` when unlabelled)."""
        return self.items["scene"].to_numpy(dtype=object)

    def scene_counts(self) -> pd.Series:
        """Images per labelled scene, largest first."""
        s = self.items.loc[self.items["scene"] != UNLABELLED, "scene"]
        return s.value_counts().sort_values(ascending=False, kind="stable")


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def load_collection(source: str | os.PathLike) -> Collection:
    """Load a collection from a scene-per-folder directory or a CSV manifest.

    Args:
        source: A directory (one sub-folder per scene; files directly in it are
            unlabelled) or a ``.csv`` file with ``path`` and ``scene`` columns.

    Raises:
        FileNotFoundError: ``source`` does not exist, or the manifest names missing files.
        ValueError: No images found, or the manifest lacks the required columns.
    """
    src = Path(source).expanduser().resolve()
    if not src.exists():
        raise FileNotFoundError(f"Collection not found: {src}")
    if src.is_file():
        root = src.parent
        df = pd.read_csv(src, dtype=str, keep_default_na=False)
        missing_cols = {"path", "scene"} - set(df.columns)
        if missing_cols:
            raise ValueError(
                f"Manifest {src} lacks column(s) {sorted(missing_cols)}; it needs 'path' and 'scene'."
            )
        rel = [Path(p).as_posix() for p in df["path"]]
        absolute = [(root / r).resolve() for r in rel]
        missing = [r for r, a in zip(rel, absolute) if not a.is_file()]
        if missing:
            shown = "\n  ".join(missing[:20]) + ("\n  ..." if len(missing) > 20 else "")
            raise FileNotFoundError(
                f"Manifest {src} names {len(missing)} missing file(s):\n  {shown}"
            )
        items = pd.DataFrame(
            {"relpath": rel, "path": [str(a) for a in absolute], "scene": df["scene"].str.strip()}
        )
    else:
        root = src
        files = sorted(
            (p for p in src.rglob("*") if _is_image(p)), key=lambda p: p.relative_to(src).as_posix()
        )
        rel = [p.relative_to(src).as_posix() for p in files]
        scene = [r.split("/")[0] if "/" in r else UNLABELLED for r in rel]
        items = pd.DataFrame({"relpath": rel, "path": [str(p) for p in files], "scene": scene})
    if items.empty:
        raise ValueError(
            f"No images found in {src}. Expected one folder per scene with image files "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}) or a CSV manifest with 'path' and 'scene'."
        )
    items = items.drop_duplicates("relpath").reset_index(drop=True)
    return Collection(root=root, items=items)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image with Pillow as 8-bit RGB.

    EXIF orientation is applied; the first page/frame is used; 16-bit, 1-bit, CMYK,
    palette and alpha images are converted (alpha composited on white).
    """
    with Image.open(path) as im:
        im.seek(0)
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(im, dtype=np.float64)
            lo, hi = np.percentile(arr, [0, 100]) if arr.size else (0, 1)
            arr = (arr - lo) / max(hi - lo, 1e-9) * 255.0
            im = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "L")
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        return im.convert("RGB")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a network input.

    Attributes:
        image_size: Side of the square input.
        resize: ``"letterbox"`` keeps the whole image (long side resized, padded to a
            square); ``"center_crop"`` is the study's Resize(256/224 * size) + CenterCrop.
        grayscale: Convert to gray (replicated to 3 channels), as the study did.
        descreen: Gaussian blur radius, as a fraction of the image's long side in
            thousandths (0 = off), applied before resizing to remove a halftone screen.
        mean: Normalisation mean (0-1 pixel scale), per channel.
        std: Normalisation std, per channel.
    """

    image_size: int = 224
    resize: str = "letterbox"
    grayscale: bool = True
    descreen: float = 0.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.resize not in ("letterbox", "center_crop"):
            raise ValueError(
                f"Unknown resize mode {self.resize!r}; use 'letterbox' or 'center_crop'."
            )
        if int(self.image_size) < 32:
            raise ValueError(f"image_size must be at least 32, got {self.image_size!r}.")

    def to_dict(self) -> dict:
        """JSON-serialisable description (part of the cache key)."""
        return asdict(self)

    def prepare(self, im: Image.Image) -> Image.Image:
        """Tone, descreen and resize a PIL image (letterbox: long side = ``image_size``, unpadded)."""
        if self.grayscale:
            im = im.convert("L")
        if self.descreen > 0:
            radius = self.descreen * max(im.size) / 1000.0
            im = im.filter(ImageFilter.GaussianBlur(radius))
        s = int(self.image_size)
        w, h = im.size
        if self.resize == "center_crop":
            scale = round(s * 256 / 224) / min(w, h)
            im = im.resize((max(s, round(w * scale)), max(s, round(h * scale))), Image.BILINEAR)
            im = ImageOps.fit(im, (s, s), method=Image.BILINEAR)
        else:
            scale = s / max(w, h)
            im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
        return im.convert("RGB")

    def to_tensor(self, im: Image.Image) -> torch.Tensor:
        """Normalised float tensor ``(3, S, S)``; letterbox padding is zero (the mean colour)."""
        arr = np.asarray(im, dtype=np.float32) / 255.0
        t = torch.from_numpy(arr).permute(2, 0, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        t = (t - mean) / std
        s = int(self.image_size)
        _, h, w = t.shape
        if (h, w) != (s, s):
            top, left = (s - h) // 2, (s - w) // 2
            t = torch.nn.functional.pad(t, (left, s - w - left, top, s - h - top))
        return t

    def __call__(self, im: Image.Image) -> torch.Tensor:
        return self.to_tensor(self.prepare(im))


def preprocess_from_meta(meta: dict) -> Preprocess:
    """The exact preprocessing a model's meta describes (see :func:`models.model_meta`)."""
    norm = meta.get("normalisation", {})
    return Preprocess(
        image_size=int(meta.get("image_size", 224)),
        resize=meta.get("resize", "letterbox"),
        grayscale=bool(meta.get("grayscale", True)),
        descreen=float(meta.get("descreen", 0.0)),
        mean=tuple(norm.get("mean", Preprocess.mean)),
        std=tuple(norm.get("std", Preprocess.std)),
    )


class ImageDataset(torch.utils.data.Dataset):
    """Images by path, decoded with Pillow and transformed; yields ``(tensor, label, index)``."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        transform: Callable[[Image.Image], torch.Tensor],
        labels: Sequence[int] | None = None,
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.transform = transform
        self.labels = list(labels) if labels is not None else [-1] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        return self.transform(load_image(self.paths[i])), self.labels[i], i


def make_split(
    items: pd.DataFrame,
    seed: int = 0,
    val_frac: float = 0.2,
    test_frac: float = 0.2,
    heldout_frac: float = 0.3,
) -> pd.DataFrame:
    """Split a collection into ``train``/``val``/``test`` images and ``heldout`` scenes.

    * ``heldout``: whole scenes (with at least 2 images) kept out of fine-tuning, for
      the scene-disjoint protocol; about ``heldout_frac`` of the labelled scenes.
    * The other scenes keep one image in ``train`` each, so every scene of ``val`` and
      ``test`` is seen in training (the study's protocol); the remaining images are
      shuffled and ``val_frac``/``test_frac`` of the seen images go to val and test.
      Scenes with a single image stay in train; unlabelled images go to train too
      (they only ever act as distractors).

    Returns:
        A frame with ``relpath``, ``scene`` and ``split``, in the order of ``items``.
    """
    for name, v in (
        ("val_frac", val_frac),
        ("test_frac", test_frac),
        ("heldout_frac", heldout_frac),
    ):
        if not 0.0 <= v < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {v!r}.")
    rng = np.random.default_rng(seed)
    scenes = items["scene"].to_numpy(dtype=object)
    split = np.full(len(items), "train", dtype=object)
    labelled = sorted({s for s in scenes if s != UNLABELLED})
    counts = pd.Series(scenes).value_counts()
    eligible = [s for s in labelled if counts[s] >= 2]
    n_held = min(len(eligible), round(heldout_frac * len(labelled)))
    held = set(rng.permutation(np.array(eligible, dtype=object))[:n_held]) if n_held else set()
    split[[s in held for s in scenes]] = "heldout"

    rest: list[int] = []
    for s in labelled:
        if s in held:
            continue
        idx = rng.permutation(np.flatnonzero(scenes == s))
        rest.extend(idx[1:].tolist())  # idx[0] stays in train
    n_seen = int(sum(1 for s in scenes if s not in held))
    rest = rng.permutation(np.array(rest, dtype=int)).tolist()
    n_val = min(len(rest), round(val_frac * n_seen))
    n_test = min(len(rest) - n_val, round(test_frac * n_seen))
    split[rest[:n_val]] = "val"
    split[rest[n_val : n_val + n_test]] = "test"
    return pd.DataFrame({"relpath": items["relpath"].to_numpy(), "scene": scenes, "split": split})


def load_or_make_split(
    collection: Collection, path: str | os.PathLike, **params: float
) -> pd.DataFrame:
    """Load the saved split at ``path``, or make it with ``params`` and save it.

    The split is made once and reused by every notebook. A saved split that was made
    with other parameters or for other files raises ``ValueError`` rather than being
    silently replaced.
    """
    path = Path(path)
    meta_path = path.with_suffix(".json")
    params = {k: (int(v) if k == "seed" else float(v)) for k, v in params.items()}
    if path.exists():
        saved = pd.read_csv(path, dtype=str, keep_default_na=False)
        saved_params = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        if saved_params and saved_params != params:
            raise ValueError(
                f"The split saved at {path} was made with {saved_params}, not {params}. "
                "Use the same parameters, or point SPLIT_FILE to a new file."
            )
        if set(saved["relpath"]) != set(collection.items["relpath"]):
            raise ValueError(
                f"The split saved at {path} is for other files than the collection in {collection.root}. "
                "Point SPLIT_FILE to a new file to make a new split."
            )
        order = {r: i for i, r in enumerate(collection.items["relpath"])}
        return saved.sort_values("relpath", key=lambda c: c.map(order)).reset_index(drop=True)
    split = make_split(collection.items, **params)
    path.parent.mkdir(parents=True, exist_ok=True)
    from .io import atomic_write_text

    atomic_write_text(path, split.to_csv(index=False))
    atomic_write_text(meta_path, json.dumps(params, indent=2))
    return split


def split_for(
    collection: Collection,
    seed: int = 0,
    val_frac: float = 0.2,
    test_frac: float = 0.2,
    heldout_frac: float = 0.3,
    split_file: str | os.PathLike = "",
) -> tuple[pd.DataFrame, Path]:
    """The collection's shared split: ``split_file``, or ``outputs/splits/<collection>-seed<seed>.csv``.

    Returns:
        ``(split, path)``; see :func:`load_or_make_split`.
    """
    from .paths import OUTPUTS_DIR, resolve

    path = (
        resolve(split_file)
        if split_file
        else OUTPUTS_DIR / "splits" / f"{collection.root.name}-seed{seed}.csv"
    )
    split = load_or_make_split(
        collection,
        path,
        seed=seed,
        val_frac=val_frac,
        test_frac=test_frac,
        heldout_frac=heldout_frac,
    )
    return split, path


def open_collection(
    data_dir: str | os.PathLike, build_demo: bool = False, demo_seed: int = 0
) -> Collection:
    """Load the collection at ``data_dir``, building the demo collection there first if asked.

    The demo is built only into a folder that does not exist yet or already holds a
    demo build (``demo_params.json``); a user's own collection is never written to.
    """
    from .paths import resolve

    root = resolve(data_dir)
    if build_demo and (not root.exists() or (root / "demo_params.json").exists()):
        from .demo import build_demo_collection

        build_demo_collection(root, seed=demo_seed)
    return load_collection(root)


def split_summary(split: pd.DataFrame) -> pd.DataFrame:
    """Images and scenes per split."""
    g = split.groupby("split")
    out = pd.DataFrame({"images": g.size(), "scenes": g["scene"].nunique()})
    return out.reindex([s for s in SPLITS if s in out.index])
