"""Descriptor extraction: batched, L2-normalised, cached by file content and model identity."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data import ImageDataset, Preprocess
from .io import save_json, save_npy
from .models import RetrievalNet, default_device, file_digest, identity, l2_normalise

OUTPUTS = ("descriptor", "logits")


@dataclass
class ExtractStats:
    """What an extraction did (for tests and progress reports)."""

    computed: int = 0
    cached: int = 0
    keys: list[str] = field(default_factory=list)


def _forward(model: RetrievalNet, x: torch.Tensor, output: str, mirror: bool) -> torch.Tensor:
    fn = model.descriptor if output == "descriptor" else model.forward
    y = fn(x)
    if mirror:
        y = y + fn(torch.flip(x, dims=[-1]))
    return y


@torch.inference_mode()
def extract(
    model: RetrievalNet,
    paths: Sequence[str | os.PathLike],
    preprocess: Preprocess,
    batch_size: int = 32,
    output: str = "descriptor",
    mirror: bool = False,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """Extract one L2-normalised vector per image.

    Args:
        model: The network; ``output`` picks its pooled descriptor or its class logits.
        paths: Image files.
        preprocess: How images become inputs (size, letterbox/crop, gray, descreen).
        batch_size: Images per forward pass.
        output: ``"descriptor"`` (pooled backbone features) or ``"logits"`` (the study's choice).
        mirror: Sum the vectors of the image and its mirror (mirror-invariant).
        device: Defaults to the best available device.
        num_workers: DataLoader worker processes for decoding.
        progress: Show a progress bar.

    Returns:
        ``float32`` array ``(len(paths), D)`` with unit-norm rows.
    """
    if output not in OUTPUTS:
        raise ValueError(f"Unknown output {output!r}; choose one of {OUTPUTS}.")
    device = torch.device(device) if device is not None else default_device()
    model = model.to(device).eval()
    channels_last = device.type == "cpu"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = DataLoader(
        ImageDataset(paths, preprocess),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    chunks: list[np.ndarray] = []
    bar = tqdm(total=len(paths), desc=f"Extracting {output}s", unit="img", disable=not progress)
    for x, _, _ in loader:
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        chunks.append(l2_normalise(_forward(model, x, output, mirror).float()).cpu().numpy())
        bar.update(len(x))
    bar.close()
    if not chunks:
        dim = (
            model.dim if output == "descriptor" else (model.head.out_features if model.head else 0)
        )
        return np.zeros((0, dim), dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32)


class DescriptorCache:
    """Vectors on disk keyed by file content (SHA-1), one folder per model identity.

    Adding images to a collection recomputes only the new files' vectors.
    """

    def __init__(self, folder: str | os.PathLike, model_key: str, meta: dict | None = None) -> None:
        self.folder = Path(folder) / model_key
        self.folder.mkdir(parents=True, exist_ok=True)
        self.model_key = model_key
        if meta is not None and not (self.folder / "meta.json").exists():
            save_json(self.folder / "meta.json", meta)
        keys_file = self.folder / "keys.json"
        vec_file = self.folder / "vectors.npy"
        if keys_file.exists() and vec_file.exists():
            self.keys: list[str] = json.loads(keys_file.read_text())
            self.vectors: np.ndarray | None = np.load(vec_file)
            if len(self.keys) != len(self.vectors):  # inconsistent: start afresh
                self.keys, self.vectors = [], None
        else:
            self.keys, self.vectors = [], None
        self._row = {k: i for i, k in enumerate(self.keys)}

    def lookup(self, keys: Sequence[str]) -> np.ndarray:
        """Row in the cache of each key, ``-1`` when absent."""
        return np.array([self._row.get(k, -1) for k in keys], dtype=int)

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Append new vectors and write the cache atomically (vectors first, then keys)."""
        new: dict[str, np.ndarray] = {}
        for k, v in zip(keys, vectors):
            if k not in self._row and k not in new:
                new[k] = v
        if not new:
            return
        stack = np.stack(list(new.values())).astype(np.float32)
        self.vectors = stack if self.vectors is None else np.concatenate([self.vectors, stack])
        for k in new:
            self._row[k] = len(self.keys)
            self.keys.append(k)
        save_npy(self.folder / "vectors.npy", self.vectors)
        save_json(self.folder / "keys.json", self.keys)

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Vectors of ``keys`` (all must be present)."""
        rows = self.lookup(keys)
        if (rows < 0).any():
            raise KeyError(f"{int((rows < 0).sum())} key(s) not in the cache")
        return self.vectors[rows]


def extract_cached(
    model: RetrievalNet,
    paths: Sequence[str | os.PathLike],
    preprocess: Preprocess,
    cache_dir: str | os.PathLike,
    model_meta: dict,
    output: str = "descriptor",
    mirror: bool = False,
    stats: ExtractStats | None = None,
    **kwargs,
) -> np.ndarray:
    """Like :func:`extract`, but reuses vectors cached under ``cache_dir``.

    The cache key combines the model's meta (backbone, weights, checkpoint digest...),
    the preprocessing, the output kind and mirroring; within it, each image is keyed
    by the SHA-1 of its bytes, so renamed files are not recomputed and changed files are.
    """
    key_meta = {
        "model": model_meta,
        "preprocess": preprocess.to_dict(),
        "output": output,
        "mirror": mirror,
    }
    cache = DescriptorCache(cache_dir, identity(key_meta), key_meta)
    keys = [file_digest(p) for p in paths]
    rows = cache.lookup(keys)
    todo = np.flatnonzero(rows < 0)
    if len(todo):
        vecs = extract(
            model, [paths[i] for i in todo], preprocess, output=output, mirror=mirror, **kwargs
        )
        cache.add([keys[i] for i in todo], vecs)
    if stats is not None:
        stats.computed += len(todo)
        stats.cached += len(paths) - len(todo)
        stats.keys = keys
    if not paths:
        return np.zeros((0, 0), dtype=np.float32)
    return cache.get(keys)
