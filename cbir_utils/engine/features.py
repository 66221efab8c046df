"""Descriptor extraction: batched, L2-normalised, streamed to disk, cached, resumable, sharded.

One batch pipeline (Pillow decoding in DataLoader workers, the model in inference mode,
channels-last on CPU, mixed precision on CUDA) behind three entries: :func:`extract` (an
array, or a ``.npy`` written batch by batch), :func:`extract_cached` (vectors cached by
file content and model, committed by chunks: a killed run resumes) and
:func:`extract_shard` (shard ``i`` of ``n`` as an independent job, merged by
``Index.from_shards``). Defaults were measured with ``benchmarks/extract.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cbir_utils.engine.models import (
    RetrievalNet,
    default_device,
    file_digest,
    identity,
    l2_normalise,
)
from cbir_utils.errors import InputError
from cbir_utils.io import atomic_write_text, differing, read_csv, save_csv, save_json, save_npy
from cbir_utils.sources.data import ImageDataset, Preprocess, check_image

OUTPUTS = ("descriptor", "logits")
CHUNK_SIZE = 256
"""Images committed to disk at a time by the resumable extractions (the resume granularity)."""
PREFETCH_FACTOR = 4
"""Batches each DataLoader worker decodes ahead of the model."""

ChunkCallback = Callable[[int, int], None]
"""``on_chunk(done, total)``: called after each chunk is safely on disk (raise to stop)."""


def default_num_workers() -> int:
    """Decoding workers: one per core beyond the first (a worker decodes the next batches while
    the model runs); 0 on a single core.
    """
    n = os.cpu_count() or 1
    return 0 if n < 2 else max(1, min(8, n - 1))


@dataclass
class ExtractStats:
    """What an extraction did (for tests and progress reports)."""

    computed: int = 0
    cached: int = 0
    keys: list[str] = field(default_factory=list)


class Sizes:
    """Preprocessings that differ only in their input size, applied to one decoded image: it
    is cut to its photograph, grayed and descreened once (:meth:`Preprocess.base`), then
    resized to each size (cirtorch's multi-scale extraction). Yields a tensor per size."""

    def __init__(self, preprocesses: Sequence[Preprocess]) -> None:
        self.preprocesses = list(preprocesses)
        first = self.preprocesses[0]
        if any(replace(p, image_size=first.image_size) != first for p in self.preprocesses):
            raise InputError("Sizes takes preprocessings that differ in image_size only.")

    def __call__(self, im) -> list[torch.Tensor]:
        base = self.preprocesses[0].base(im)
        return [p.to_tensor(p.sized(base)) for p in self.preprocesses]


def _forward(model: RetrievalNet, x: torch.Tensor, output: str, mirror: bool) -> torch.Tensor:
    fn = model.descriptor if output == "descriptor" else model.forward
    y = fn(x)
    if mirror:
        y = y + fn(torch.flip(x, dims=[-1]))
    return y


def output_dim(model: RetrievalNet, output: str = "descriptor") -> int:
    """Length of the vectors ``extract`` returns for ``model`` and ``output``."""
    if output not in OUTPUTS:
        raise InputError(f"Unknown output {output!r}; choose one of {OUTPUTS}.")
    if output == "descriptor":
        return int(model.dim)
    return int(model.head.out_features) if model.head is not None else 0


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (``None``: leave as is), then restore."""
    if n is None:
        yield
        return
    if int(n) < 1:
        raise InputError(f"threads must be a positive integer or None, got {n!r}.")
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def make_loader(
    paths: Sequence[str | os.PathLike],
    preprocess: Preprocess,
    batch_size: int = 32,
    num_workers: int | None = None,
    device: torch.device | str = "cpu",
    prefetch_factor: int | None = None,
) -> DataLoader:
    """The extraction DataLoader: ``num_workers`` decoding processes (``None``: automatic), a
    single batch in the main process; pinned memory on CUDA.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}.")
    workers = default_num_workers() if num_workers is None else int(num_workers)
    if workers < 0:
        raise InputError(f"num_workers must be >= 0 or None, got {num_workers!r}.")
    n_batches = -(-len(paths) // batch_size)
    workers = 0 if n_batches <= 1 else min(workers, n_batches)  # nothing to overlap / no idle
    extra = {}
    if workers > 0:
        extra = {"prefetch_factor": prefetch_factor or PREFETCH_FACTOR}
    return DataLoader(
        ImageDataset(paths, preprocess),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=torch.device(device).type == "cuda",
        **extra,
    )


def iter_vectors(
    model: RetrievalNet,
    paths: Sequence[str | os.PathLike],
    preprocess: Preprocess,
    batch_size: int = 32,
    output: str = "descriptor",
    mirror: bool = False,
    device: torch.device | str | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    prefetch_factor: int | None = None,
    amp: bool | None = None,
    desc: str | None = None,
    threads: int | None = None,
) -> Iterator[np.ndarray]:
    """Yield the L2-normalised vectors of ``paths``, one ``float32`` batch at a time, in order.

    The building block of every extraction here; see :func:`extract` for the arguments.
    ``amp=None`` uses float16 autocast on CUDA and full precision elsewhere.
    """
    if output not in OUTPUTS:
        raise InputError(f"Unknown output {output!r}; choose one of {OUTPUTS}.")
    device = torch.device(device) if device is not None else default_device()
    model = model.to(device).eval()
    channels_last = device.type == "cpu"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    use_amp = (device.type == "cuda") if amp is None else bool(amp)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    if not len(paths):
        return
    loader = make_loader(paths, preprocess, batch_size, num_workers, device, prefetch_factor)
    bar = tqdm(
        total=len(paths), desc=desc or f"Extracting {output}s", unit="img", disable=not progress
    )
    try:
        with torch_threads(threads):
            yield from _run(
                loader, model, device, channels_last, use_amp, amp_dtype, output, mirror, bar
            )
    finally:
        bar.close()


def _run(loader, model, device, channels_last, use_amp, amp_dtype, output, mirror, bar):
    for batch, _, _ in loader:
        vs = []
        for x in batch if isinstance(batch, list) else [batch]:  # a tensor per size (Sizes)
            with torch.inference_mode():
                x = x.to(device, non_blocking=True)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    y = _forward(model, x, output, mirror)
                vs.append(l2_normalise(y.float()).cpu().numpy().astype(np.float32, copy=False))
        bar.update(len(vs[0]))
        yield vs if isinstance(batch, list) else vs[0]


class NpyRowWriter:
    """A ``float32`` ``.npy`` of known shape written block by block in place with ``pwrite`` (no
    memory map: resident memory stays flat); it reads back with ``np.load(mmap_mode="r")``.
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, int], create: bool = True):
        self.path = Path(path)
        self.shape = (int(shape[0]), int(shape[1]))
        if create or not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            mm = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float32, shape=shape)
            self.offset = int(mm.offset)
            del mm
        else:
            mm = np.load(self.path, mmap_mode="r")
            if mm.shape != self.shape or mm.dtype != np.float32:
                raise InputError(f"{self.path} holds {mm.shape} {mm.dtype}, not {self.shape}.")
            self.offset = int(mm.offset)
            del mm
        self._fd = os.open(self.path, os.O_RDWR)
        self._row_bytes = 4 * self.shape[1]

    def write(self, start: int, rows: np.ndarray) -> None:
        """Write ``rows`` at row ``start``."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.shape[1]:
            raise InputError(f"Rows of shape {rows.shape} do not fit {self.shape}.")
        if start < 0 or start + len(rows) > self.shape[0]:
            raise InputError(f"Rows {start}..{start + len(rows)} are outside {self.shape}.")
        data = memoryview(rows).cast("B")
        pos = self.offset + start * self._row_bytes
        while len(data):
            n = os.pwrite(self._fd, data, pos)
            data, pos = data[n:], pos + n

    def flush(self) -> None:
        """Force the written rows to disk (before recording them as done)."""
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> NpyRowWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def extract(
    model: RetrievalNet,
    paths: Sequence[str | os.PathLike],
    preprocess: Preprocess | Sizes,
    batch_size: int = 32,
    output: str = "descriptor",
    mirror: bool = False,
    device: torch.device | str | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    *,
    out: str | os.PathLike | None = None,
    prefetch_factor: int | None = None,
    amp: bool | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """One L2-normalised vector per image: the pooled descriptor or the class logits (``output``).

    ``mirror`` sums the vectors of the image and its mirror. ``num_workers`` ``None`` picks
    :func:`default_num_workers`. ``out``: a ``.npy`` path streamed batch by batch, appearing
    atomically, returned as a read-only memory map. ``amp`` ``None``: float16 on CUDA only.
    ``threads``: torch threads during the call; on 2 shared cores 1 thread was 2-4 times faster
    than 2 (OpenMP threads wait whenever another process takes a core). With :class:`Sizes`, a
    list of arrays, one per size, each image decoded once.
    """
    dim = output_dim(model, output)
    opts = dict(
        batch_size=batch_size,
        output=output,
        mirror=mirror,
        device=device,
        num_workers=num_workers,
        progress=progress,
        prefetch_factor=prefetch_factor,
        amp=amp,
        threads=threads,
    )
    if isinstance(preprocess, Sizes):
        if out is not None:
            raise InputError("out= streams one size; give one Preprocess, not Sizes.")
        chunks = list(iter_vectors(model, paths, preprocess, **opts))
        return [
            np.concatenate([c[i] for c in chunks]) if chunks else np.zeros((0, dim), np.float32)
            for i in range(len(preprocess.preprocesses))
        ]
    if out is None:
        chunks = list(iter_vectors(model, paths, preprocess, **opts))
        if not chunks:
            return np.zeros((0, dim), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32, copy=False)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with NpyRowWriter(tmp, (len(paths), dim)) as writer:
            row = 0
            for v in iter_vectors(model, paths, preprocess, **opts):
                writer.write(row, v)
                row += len(v)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return np.load(out, mmap_mode="r")


# --------------------------------------------------------------------------- content cache


class DescriptorCache:
    """Vectors on disk keyed by file content (SHA-1), one folder per model identity.

    Each :meth:`add` writes one *part* (``part-*.npy``, then ``part-*.keys.json``, each
    atomically; a part counts once its keys exist): a commit costs the chunk, not the cache,
    and a killed writer never corrupts what was committed. The older single-file layout
    (``vectors.npy`` + ``keys.json``) is read too.
    """

    def __init__(self, folder: str | os.PathLike, model_key: str, meta: dict | None = None) -> None:
        self.folder = Path(folder) / model_key
        self.folder.mkdir(parents=True, exist_ok=True)
        self.model_key = model_key
        if meta is not None and not (self.folder / "meta.json").exists():
            save_json(self.folder / "meta.json", meta)
        self.keys: list[str] = []
        self._parts: list[np.ndarray] = []
        self._stacked: np.ndarray | None = None
        self._row: dict[str, int] = {}
        keys_file, vec_file = self.folder / "keys.json", self.folder / "vectors.npy"
        if keys_file.exists() and vec_file.exists():
            self._load_part(vec_file, keys_file)
        for kf in sorted(self.folder.glob("part-*.keys.json")):
            self._load_part(kf.with_name(kf.name.replace(".keys.json", ".npy")), kf)

    def _load_part(self, vec_file: Path, keys_file: Path) -> None:
        try:
            keys = json.loads(keys_file.read_text())
            vecs = np.load(vec_file)
        except (OSError, ValueError, EOFError):  # unreadable: ignored (recomputed if needed)
            return
        if len(keys) != len(vecs) or vecs.ndim != 2:  # inconsistent: ignore it
            return
        if self._parts and vecs.shape[1] != self._parts[0].shape[1]:
            return
        fresh = [i for i, k in enumerate(keys) if k not in self._row]
        if len(fresh) != len(keys):
            keys, vecs = [keys[i] for i in fresh], vecs[fresh]
        if not keys:
            return
        for k in keys:
            self._row[k] = len(self.keys)
            self.keys.append(k)
        self._parts.append(vecs.astype(np.float32, copy=False))
        self._stacked = None

    @property
    def vectors(self) -> np.ndarray | None:
        """All cached vectors, in the order of :attr:`keys` (``None`` when empty)."""
        if not self._parts:
            return None
        if self._stacked is None:
            self._stacked = self._parts[0] if len(self._parts) == 1 else np.concatenate(self._parts)
            self._parts = [self._stacked]
        return self._stacked

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, keys: Sequence[str]) -> np.ndarray:
        """Row in the cache of each key, ``-1`` when absent."""
        return np.array([self._row.get(k, -1) for k in keys], dtype=int)

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Append new vectors as one part, written atomically (vectors first, then keys)."""
        new: dict[str, np.ndarray] = {}
        for k, v in zip(keys, vectors):
            if k not in self._row and k not in new:
                new[k] = v
        if not new:
            return
        stack = np.stack(list(new.values())).astype(np.float32)
        name = f"part-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        save_npy(self.folder / f"{name}.npy", stack)
        save_json(self.folder / f"{name}.keys.json", list(new))
        for k in new:
            self._row[k] = len(self.keys)
            self.keys.append(k)
        self._parts.append(stack)
        self._stacked = None

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Vectors of ``keys`` (all must be present)."""
        rows = self.lookup(keys)
        if (rows < 0).any():
            raise KeyError(f"{int((rows < 0).sum())} key(s) not in the cache")
        return self.vectors[rows]


def extract_cached(
    model: RetrievalNet,
    paths: Sequence[str | os.PathLike],
    preprocess: Preprocess | Sizes,
    cache_dir: str | os.PathLike,
    model_meta: dict,
    output: str = "descriptor",
    mirror: bool = False,
    stats: ExtractStats | None = None,
    *,
    chunk_size: int = CHUNK_SIZE,
    on_chunk: ChunkCallback | None = None,
    keys: Sequence[str] | None = None,
    **kwargs,
) -> np.ndarray:
    """Like :func:`extract`, reusing the vectors cached under ``cache_dir``.

    The cache is keyed by the model's meta, preprocessing, output and mirroring, then by each
    file's SHA-1 (renamed files are not recomputed). New vectors are committed every
    ``chunk_size`` images, after which ``on_chunk(done, total)`` is called (an exception there
    stops the run, committed chunks kept). ``keys``: the files' SHA-1s when known; ``paths``
    may then be decoded images. With :class:`Sizes`, a cache per size and a list of arrays.
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    several = isinstance(preprocess, Sizes)
    caches = []
    for pre in preprocess.preprocesses if several else [preprocess]:
        meta = {**model_meta, "image_size": pre.image_size} if several else model_meta
        key_meta = {"model": meta, "preprocess": pre.to_dict(), "output": output, "mirror": mirror}
        caches.append(DescriptorCache(cache_dir, identity(key_meta), key_meta))
    keys = list(keys) if keys is not None else [file_digest(p) for p in paths]
    if len(keys) != len(paths):
        raise InputError(f"{len(keys)} keys for {len(paths)} images.")
    todo = np.flatnonzero(np.any([c.lookup(keys) < 0 for c in caches], axis=0))
    if len(todo):
        todo_keys = [keys[i] for i in todo]
        done, pending = 0, []
        batches = iter_vectors(
            model, [paths[i] for i in todo], preprocess, output=output, mirror=mirror, **kwargs
        )
        for v in batches:
            pending.append(v if several else [v])
            n_pending = sum(len(p[0]) for p in pending)
            if n_pending >= chunk_size or done + n_pending == len(todo):
                for i, cache in enumerate(caches):
                    block = np.concatenate([p[i] for p in pending])
                    cache.add(todo_keys[done : done + len(block)], block)
                done += len(block)
                pending = []
                if stats is not None:
                    stats.computed += len(block)
                if on_chunk is not None:
                    on_chunk(done, len(todo))
    if stats is not None:
        stats.cached += len(paths) - len(todo)
        stats.keys = keys
    if not paths:
        empty = np.zeros((0, 0), dtype=np.float32)
        return [empty] * len(caches) if several else empty
    out = [cache.get(keys) for cache in caches]
    return out if several else out[0]


# --------------------------------------------------------------------------- shards


def shard_rows(n_items: int, shard: int, num_shards: int) -> range:
    """Rows of shard ``shard`` (0-based) of ``num_shards``: contiguous, sizes differing by 1 at most.

    The partition depends only on ``n_items``, so independent jobs agree on it as long as
    they list the collection in the same order (``data.load_collection`` sorts it).
    """
    if not isinstance(num_shards, int) or num_shards < 1:
        raise InputError(f"num_shards must be a positive integer, got {num_shards!r}.")
    if not isinstance(shard, int) or not 0 <= shard < num_shards:
        raise InputError(f"shard must be an integer in [0, {num_shards}), got {shard!r}.")
    return range(n_items * shard // num_shards, n_items * (shard + 1) // num_shards)


def shard_dir(out_dir: str | os.PathLike, shard: int, num_shards: int) -> Path:
    """Folder of one shard: ``out_dir/shard-00003-of-00010`` (0-based shard number)."""
    return Path(out_dir) / f"shard-{shard:05d}-of-{num_shards:05d}"


def collection_digest(paths: Sequence[str | os.PathLike]) -> str:
    """SHA-1 of the ordered list of paths: shards of one extraction must share it."""
    h = hashlib.sha1()
    for p in paths:
        h.update(str(p).encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


@dataclass
class ShardResult:
    """One shard's extraction: its ``folder`` (``vectors.npy``, ``paths.txt``, ``meta.json``),
    ``rows`` in the collection, images ``computed`` now or ``resumed_from`` disk, ``skipped``.
    """

    folder: Path
    rows: range
    computed: int
    resumed_from: int
    complete: bool
    skipped: int = 0


def _extraction_meta(
    model_meta: dict | None,
    preprocess: Preprocess,
    output: str,
    mirror: bool,
    paths: Sequence[str | os.PathLike],
    num_shards: int,
    dim: int,
) -> dict:
    return json.loads(
        json.dumps(
            {
                "model": model_meta or {},
                "preprocess": preprocess.to_dict(),
                "output": output,
                "mirror": bool(mirror),
                "n_items": len(paths),
                "collection_digest": collection_digest(paths),
                "num_shards": int(num_shards),
                "dim": int(dim),
            },
            default=str,
        )
    )


SHARD_SKIPPED_COLUMNS = ("path", "kind", "reason")


def _usable_paths(folder: Path, paths: list[str], validate: str, progress: bool) -> list[str]:
    """The shard's paths that pass :func:`data.check_image` at level ``validate``; the
    others are listed in ``folder/skipped.csv`` (written once: a resumed job reads it)."""
    if validate == "none":
        return paths
    listed = folder / "skipped.csv"
    if listed.exists():
        bad = set(read_csv(listed)["path"])
    else:
        rows = []
        for p in tqdm(paths, desc="Checking images", unit="img", disable=not progress):
            check = check_image(p, validate)
            if not check.usable:
                rows.append((p, check.kind, check.reason))
        save_csv(listed, pd.DataFrame(rows, columns=list(SHARD_SKIPPED_COLUMNS)))
        bad = {r[0] for r in rows}
    return [p for p in paths if p not in bad]


def _read_progress(folder: Path) -> int:
    try:
        return int(json.loads((folder / "progress.json").read_text())["done"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def extract_shard(
    model: RetrievalNet,
    paths: Sequence[str | os.PathLike],
    preprocess: Preprocess,
    out_dir: str | os.PathLike,
    shard: int = 0,
    num_shards: int = 1,
    model_meta: dict | None = None,
    output: str = "descriptor",
    mirror: bool = False,
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
    device: torch.device | str | None = None,
    chunk_size: int = CHUNK_SIZE,
    progress: bool = True,
    on_chunk: ChunkCallback | None = None,
    prefetch_factor: int | None = None,
    amp: bool | None = None,
    threads: int | None = None,
    validate: str = "none",
) -> ShardResult:
    """Extract shard ``shard`` of ``num_shards`` of a collection into ``out_dir``, resumably.

    Every job gets the whole ordered list of paths and computes only its rows
    (:func:`shard_rows`) into :func:`shard_dir`: ``vectors.npy`` streamed, ``paths.txt`` and
    ``meta.json``. Progress is recorded every ``chunk_size`` images once synced, so a killed
    job continues from its last chunk. ``validate`` checks the shard's own images first (give
    every job the unchecked listing); unusable ones go to its ``skipped.csv``. A folder holding
    a shard of another extraction is an error: nothing is overwritten.
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    rows = shard_rows(len(paths), shard, num_shards)
    dim = output_dim(model, output)
    meta = _extraction_meta(model_meta, preprocess, output, mirror, paths, num_shards, dim)
    meta = {**meta, "validate": validate}
    meta_shard = {**meta, "shard": int(shard), "rows": [rows.start, rows.stop]}
    folder = shard_dir(out_dir, shard, num_shards)
    folder.mkdir(parents=True, exist_ok=True)
    vec_path, partial = folder / "vectors.npy", folder / "vectors.npy.partial"
    meta_path = folder / "meta.json"
    if meta_path.exists():
        saved = json.loads(meta_path.read_text())
        if saved != meta_shard:
            diff = differing(saved, meta_shard)
            raise InputError(
                f"{folder} holds a shard of another extraction (differing: {', '.join(diff)}). "
                "Use another output folder; nothing was overwritten."
            )
        if vec_path.exists():
            n_kept = len(np.load(vec_path, mmap_mode="r"))
            return ShardResult(folder, rows, 0, n_kept, True, len(rows) - n_kept)
    else:
        for stale in (vec_path, partial, folder / "progress.json", folder / "skipped.csv"):
            if stale.exists():
                stale.unlink()
        save_json(meta_path, meta_shard)
    shard_paths = _usable_paths(folder, [str(paths[i]) for i in rows], validate, progress)
    n_rows, n_skipped = len(shard_paths), len(rows) - len(shard_paths)
    if not (folder / "paths.txt").exists():
        atomic_write_text(folder / "paths.txt", "".join(p + "\n" for p in shard_paths))
    if n_rows == 0:  # nothing usable (or an empty shard)
        save_npy(vec_path, np.zeros((0, dim), np.float32))
        return ShardResult(folder, rows, 0, 0, True, n_skipped)
    done = _read_progress(folder) if partial.exists() else 0
    done = min(done, n_rows)
    resumed_from = done
    try:
        writer = NpyRowWriter(partial, (n_rows, dim), create=done == 0)
    except ValueError:  # a damaged partial file: start the shard again
        done = resumed_from = 0
        writer = NpyRowWriter(partial, (n_rows, dim), create=True)
    computed = 0
    with writer:
        batches = iter_vectors(
            model,
            shard_paths[done:],
            preprocess,
            batch_size=batch_size,
            output=output,
            mirror=mirror,
            device=device,
            num_workers=num_workers,
            progress=progress,
            prefetch_factor=prefetch_factor,
            amp=amp,
            desc=f"Shard {shard + 1}/{num_shards}",
            threads=threads,
        )
        since = 0
        for v in batches:
            writer.write(done + since, v)
            since += len(v)
            if since >= chunk_size or done + since == n_rows:
                writer.flush()
                done += since
                computed += since
                since = 0
                save_json(folder / "progress.json", {"done": done, "total": n_rows})
                if on_chunk is not None:
                    on_chunk(done, n_rows)
    if done == n_rows:
        os.replace(partial, vec_path)
    return ShardResult(folder, rows, computed, resumed_from, done == n_rows, n_skipped)
