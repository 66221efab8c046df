"""A saved index of a collection: search it with new images or image regions, add images.

An index folder (e.g. ``outputs/index/<name>/``)::

    index.json               settings, model meta, and the names of the two files below
    vectors-<digest>.npy     float32 (N, D), unit-norm rows, in the order of items
    items-<digest>.csv       relpath, path (absolute), scene ("" when unlabelled), sha1,
                             then the collection's metadata columns (periodical, date...)
    verdicts.csv             review decisions imported with `verdicts import` (history)

``index.json`` is written last and atomically and names the data files by their content:
a killed update leaves the previous index whole.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cbir_utils import paths as project
from cbir_utils.config import BACKBONE, WEIGHTS, PipelineConfig
from cbir_utils.engine import features, models
from cbir_utils.engine import pipeline as P
from cbir_utils.engine import verify as V
from cbir_utils.engine.descriptors import l2n, scaled_sizes
from cbir_utils.engine.models import preprocess_from_meta
from cbir_utils.errors import InputError, MissingFilesError
from cbir_utils.io import atomic_write_bytes, csv_text, read_csv, save_json, save_npy
from cbir_utils.paths import image_file
from cbir_utils.sources import provenance
from cbir_utils.sources.data import (
    SKIPPED_COLUMNS,
    UNLABELLED,
    Collection,
    ItemTable,
    load_collection,
    load_image,
)
from cbir_utils.sources.provenance import metadata_columns

INDEX_FILE = "index.json"
FORMAT_VERSION = 2  # 2: the retrieval pipeline (multi-scale, whitening...) in index.json
QUERY_CHUNK = 64
"""Query images held decoded at once by :meth:`Index.search` (a folder of queries)."""
ITEM_COLUMNS = ("relpath", "path", "scene", "sha1")


# --------------------------------------------------------------------------- model settings


def model_settings(
    backbone: str = BACKBONE,
    weights: str = WEIGHTS,
    pooling: str = PipelineConfig.pooling,
    image_size: int = PipelineConfig.image_size,
    resize: str = PipelineConfig.resize,
    grayscale: bool = PipelineConfig.grayscale,
    descreen: float = PipelineConfig.descreen,
    checkpoint: str | os.PathLike | None = None,
    find_photo: bool = PipelineConfig.find_photo,
) -> tuple[dict, str | None]:
    """``(meta, checkpoint or None)`` an index is built with, defaults from :mod:`config`; with a
    fine-tuned ``checkpoint``, its own meta and SHA-1 (as notebook 03), the rest ignored.
    """
    photo = {"find_photo": True} if find_photo else {}  # absent when off: older cache keys
    if checkpoint:
        ckpt = Path(checkpoint).expanduser().resolve()
        if not ckpt.is_file():
            raise MissingFilesError(f"Checkpoint not found: {ckpt}")

        saved = models.safe_load(ckpt)
        if not isinstance(saved, dict) or "meta" not in saved:
            raise InputError(f"{ckpt} is not a cbir_utils checkpoint (no 'meta').")
        return {**saved["meta"], "checkpoint_sha1": models.file_digest(ckpt), **photo}, str(ckpt)
    meta = models.model_meta(
        backbone,
        weights,
        pooling,
        int(image_size),
        resize=resize,
        grayscale=bool(grayscale),
        descreen=float(descreen),
        **photo,
    )
    preprocess_from_meta(meta)  # validates resize / image size early
    return meta, None


def load_model(meta: dict, checkpoint: str | None = None) -> models.RetrievalNet:
    """Rebuild the network an index was made with (checkpoint verified by its SHA-1)."""
    if checkpoint:
        if models.file_digest(checkpoint) != meta.get("checkpoint_sha1"):
            raise InputError(
                f"The checkpoint {checkpoint} changed since the index was built; "
                "rebuild the index with it."
            )
        return models.load_checkpoint(checkpoint)[0].eval()
    return models.build_model(meta["backbone"], meta["weights"], meta["pooling"]).eval()


# --------------------------------------------------------------------------- boxes


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` (pixels of the image as displayed) as four floats."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        box = tuple(float(p) for p in parts)
    except ValueError:
        box = ()
    if len(box) != 4:
        raise InputError(f"A box is four numbers x0,y0,x1,y1 in pixels, got {text!r}.")
    return box  # type: ignore[return-value]


def crop_box(image, box: Sequence[float]):
    """Crop a PIL image to ``box = (x0, y0, x1, y1)`` in pixels, clipped to the image."""
    if len(box) != 4:
        raise InputError(f"A box is four numbers x0,y0,x1,y1, got {box!r}.")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise InputError(f"Box {box!r} is empty: it needs x0 < x1 and y0 < y1.")
    w, h = image.size
    cx0, cy0, cx1, cy1 = max(0, round(x0)), max(0, round(y0)), min(w, round(x1)), min(h, round(y1))
    if cx1 - cx0 < 1 or cy1 - cy0 < 1:
        raise InputError(f"Box {box!r} lies outside the image ({w} x {h} pixels).")
    return image.crop((cx0, cy0, cx1, cy1))


# --------------------------------------------------------------------------- embedding


@dataclass
class Embedder:
    """How an index turns images (or regions of them) into descriptors or logits; the network is
    built from ``meta`` on first use when ``model`` is not given.
    """

    meta: dict
    checkpoint: str | None = None
    output: str = "descriptor"
    mirror: bool = False
    config: PipelineConfig | None = None
    model: models.RetrievalNet | None = field(default=None, repr=False)

    def network(self) -> models.RetrievalNet:
        """The network (built once, on first use; a checkpoint verified by its SHA-1)."""
        if self.model is None:
            self.model = load_model(self.meta, self.checkpoint)
        return self.model

    def files(self, paths, cache_dir=None, stats=None, **kwargs) -> np.ndarray:
        """Descriptors of image files, through the descriptor cache (default
        ``outputs/cache``, shared with the notebooks)."""
        cache = Path(cache_dir) if cache_dir else _default_cache()
        return self._extract(paths, cache, stats, **kwargs)

    def images(
        self,
        images: Sequence[Image.Image],
        keys: Sequence[str] | None = None,
        cache_dir: str | os.PathLike | None = None,
        stats: features.ExtractStats | None = None,
        **kwargs,
    ) -> np.ndarray:
        """Descriptors of decoded query images (each decoded once for every scale), cached
        by ``keys`` (their files' digests) when given; regions are given without keys."""
        cache = None if keys is None else Path(cache_dir) if cache_dir else _default_cache()
        return self._extract(list(images), cache, stats, keys=keys, **kwargs)

    def _extract(self, paths, cache: Path | None, stats, **kwargs) -> np.ndarray:
        """The descriptors (or logits) of ``paths`` (files or decoded images), through
        ``cache`` unless it is None."""
        paths = [p if isinstance(p, Image.Image) else str(p) for p in paths]
        net = self.network()
        if self.output == "descriptor":
            return P.describe(net, self.meta, paths, self.config, cache, stats=stats, **kwargs)
        keys = kwargs.pop("keys", None)
        how = dict(output=self.output, mirror=self.mirror, **kwargs)
        pre = preprocess_from_meta(self.meta)
        if cache is None:
            return features.extract(net, paths, pre, **how)
        return features.extract_cached(
            net, paths, pre, cache, self.meta, stats=stats, keys=keys, **how
        )


# --------------------------------------------------------------------------- the index


@dataclass
class AddReport:
    """What :meth:`Index.add` did."""

    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    stats: features.ExtractStats = field(default_factory=features.ExtractStats)


@dataclass
class Index(ItemTable):
    """Descriptors of a collection with everything needed to query it later.

    The store (items, vectors, :meth:`add`, :meth:`save`, :meth:`load`), the :attr:`embedder`
    and the searcher (:meth:`fitted`, a :class:`FittedPipeline` saved with the index).
    ``items`` has :data:`ITEM_COLUMNS` then the metadata columns, one row per vector; ``config``
    says how the vectors were made and how queries are ranked.
    """

    vectors: np.ndarray
    items: pd.DataFrame
    meta: dict
    checkpoint: str | None = None
    output: str = "descriptor"
    mirror: bool = False
    root: str = ""
    name: str = ""
    config: PipelineConfig | None = None
    folder: str = ""
    _model: models.RetrievalNet | None = field(default=None, repr=False, compare=False)
    _fitted: P.FittedPipeline | None = field(default=None, repr=False, compare=False)
    _fitted_digest: str = field(default="", repr=False, compare=False)
    _digest: tuple = field(default=(None, ""), repr=False, compare=False)  # (vectors, sha1)

    def __post_init__(self) -> None:
        if self.config is None:
            self.config = pipeline_config(self.meta, self.mirror)
        self.embedder = Embedder(
            self.meta, self.checkpoint, self.output, self.mirror, self.config, self._model
        )

    def __len__(self) -> int:
        return len(self.items)

    @property
    def relpaths(self) -> list[str]:
        """File names relative to :attr:`root` (absolute for images added from elsewhere)."""
        return self.items["relpath"].tolist()

    @property
    def has_labels(self) -> bool:
        """Whether some scene has at least two labelled images (evaluation is possible)."""
        s = pd.Series(self.scenes)
        return bool((s[s != UNLABELLED].value_counts() >= 2).any())

    @property
    def preprocess(self):
        """The :class:`cbir_utils.sources.data.Preprocess` of the model meta."""
        return preprocess_from_meta(self.meta)

    def collection(self) -> Collection:
        """The indexed images as a :class:`cbir_utils.sources.data.Collection` (for splits)."""
        return Collection(root=Path(self.root), items=self.items.drop(columns=["sha1"]))

    # ---- building

    @classmethod
    def build(
        cls,
        source: str | os.PathLike | Collection,
        meta: dict,
        checkpoint: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        mirror: bool = False,
        output: str = "descriptor",
        model: models.RetrievalNet | None = None,
        stats: features.ExtractStats | None = None,
        name: str = "",
        config: PipelineConfig | None = None,
        **extract_kwargs,
    ) -> Index:
        """Embed every image of a collection (folder per scene, CSV manifest, or loaded).

        ``extract_kwargs``: ``batch_size``, ``num_workers``, ``progress``, ``device``.
        """
        col = source if isinstance(source, Collection) else load_collection(source)
        index = cls(
            vectors=np.zeros((0, 0), dtype=np.float32),
            items=pd.DataFrame({c: pd.Series(dtype=str) for c in ITEM_COLUMNS}),
            meta=meta,
            checkpoint=checkpoint,
            output=output,
            mirror=mirror,
            root=str(col.root),
            name=name or col.root.name,
            config=config,
            _model=model,
        )
        index.add(
            col.items["path"].tolist(),
            col.items["scene"].tolist(),
            col.items["relpath"].tolist(),
            cache_dir=cache_dir,
            stats=stats,
            metadata=_metadata_records(col.items),
            **extract_kwargs,
        )
        return index

    @classmethod
    def from_vectors(
        cls,
        vectors: np.ndarray,
        source: str | os.PathLike | Collection,
        meta: dict,
        checkpoint: str | None = None,
        mirror: bool = False,
        output: str = "descriptor",
        name: str = "",
        config: PipelineConfig | None = None,
    ) -> Index:
        """An index from vectors computed elsewhere (e.g. merged shards), in collection order.

        ``config`` must describe how the vectors were made (its scales).
        """
        col = source if isinstance(source, Collection) else load_collection(source)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(col):
            raise InputError(f"{len(vectors)} vectors for {len(col)} images of {col.root}.")
        items = col.items.copy()
        items.insert(3, "sha1", [models.file_digest(p) for p in items["path"]])
        return cls(
            vectors=vectors,
            items=items.reset_index(drop=True),
            meta=meta,
            checkpoint=checkpoint,
            output=output,
            mirror=mirror,
            root=str(col.root),
            name=name or col.root.name,
            config=config,
        )

    @classmethod
    def from_shards(
        cls,
        shards_dir: str | os.PathLike,
        col: Collection,
        meta: dict,
        checkpoint: str | None = None,
        mirror: bool = False,
        name: str = "",
        config: PipelineConfig | None = None,
        num_shards: int | None = None,
    ) -> tuple[Index, Collection]:
        """The index of a sharded extraction, and ``col`` as indexed (the images the shards left
        out as unusable added to its ``skipped``).

        Every shard must be finished and made with this model, mirroring and listing of ``col``;
        several scales' vectors are summed and normalised, as in ``extract_multiscale``.
        """

        config = config or pipeline_config(meta, mirror)
        parts = [read_shards(d, num_shards) for _, d in shard_scales(
            Path(shards_dir), int(meta["image_size"]), config.scales)]  # fmt: skip
        if any(p[1] != parts[0][1] for p in parts[1:]):
            raise InputError(f"The shards of the scales in {shards_dir} hold other images.")
        vectors = l2n(sum(p[0].astype(np.float32) for p in parts))  # as extract_multiscale
        _, paths, smeta, listed = parts[0]
        if models.identity(smeta.get("model", {})) != models.identity(meta) or bool(
            smeta.get("mirror")
        ) != bool(mirror):
            raise InputError(
                f"The shards in {shards_dir} were made with other model settings than given here."
            )
        as_str = col.items["path"].map(str)
        if smeta.get("collection_digest") != features.collection_digest(as_str.tolist()):
            raise InputError(f"The shards in {shards_dir} were made for another list of files.")
        why = dict(zip(listed["path"], zip(listed["kind"], listed["reason"])))
        bad = col.items[as_str.isin(set(why))].copy()
        bad["kind"] = [why[str(p)][0] for p in bad["path"]]
        bad["reason"] = [why[str(p)][1] for p in bad["path"]]
        items = col.items[as_str.isin(set(paths))].reset_index(drop=True)
        skipped = pd.concat([col.skipped, bad[list(SKIPPED_COLUMNS)]], ignore_index=True)
        col = replace(col, items=items, skipped=skipped)
        index = cls.from_vectors(vectors, col, meta, checkpoint, mirror, name=name, config=config)
        return index, col

    def _relpath(self, path: Path) -> str:
        try:
            return path.relative_to(Path(self.root).resolve()).as_posix()
        except ValueError:
            return path.as_posix()

    def add(
        self,
        paths: Sequence[str | os.PathLike],
        scenes: Sequence[str] | None = None,
        relpaths: Sequence[str] | None = None,
        cache_dir: str | os.PathLike | None = None,
        stats: features.ExtractStats | None = None,
        metadata: Sequence[dict] | None = None,
        **extract_kwargs,
    ) -> AddReport:
        """Add images, embedding only those neither indexed with the same content nor cached.

        An image indexed under the same name with new content is replaced; ``metadata`` rows
        replace what the index held, even for unchanged images.
        """
        abs_paths = [Path(p).expanduser().resolve() for p in paths]
        missing = [str(p) for p in abs_paths if not image_file(p).is_file()]
        if missing:
            raise MissingFilesError(f"{len(missing)} image file(s) not found, e.g. {missing[0]}")
        scenes = [UNLABELLED] * len(abs_paths) if scenes is None else [str(s) for s in scenes]
        if relpaths is None:
            relpaths = [self._relpath(p) for p in abs_paths]
        if not (len(scenes) == len(relpaths) == len(abs_paths)):
            raise InputError("paths, scenes and relpaths must have the same length.")
        if metadata is not None and len(metadata) != len(abs_paths):
            raise InputError(f"{len(metadata)} metadata rows for {len(abs_paths)} images.")
        report = AddReport(stats=stats if stats is not None else features.ExtractStats())
        digests = [models.file_digest(p) for p in abs_paths]
        row_of = {r: i for i, r in enumerate(self.items["relpath"])}
        todo = []  # positions in the input
        for k, (rel, dig) in enumerate(zip(relpaths, digests)):
            i = row_of.get(rel)
            if i is not None and self.items.at[i, "sha1"] == dig:
                report.unchanged += 1
            else:
                todo.append(k)
        if metadata is not None:
            pending = set(todo)
            self._set_metadata(
                {relpaths[k]: metadata[k] for k in range(len(relpaths)) if k not in pending}
            )
        if not todo:
            return report
        vecs = self.embedder.files(
            [abs_paths[k] for k in todo], cache_dir, report.stats, **extract_kwargs
        )
        items = self.items.copy()
        vectors = self.vectors if len(self.vectors) else np.zeros((0, vecs.shape[1]), np.float32)
        if vectors.shape[1] != vecs.shape[1]:
            raise InputError(
                f"Index vectors have {vectors.shape[1]} dims, new ones {vecs.shape[1]}."
            )
        new_rows, new_vecs = [], []
        for v, k in zip(vecs, todo):
            row = {
                **(metadata[k] if metadata is not None else {}),
                "relpath": relpaths[k],
                "path": str(abs_paths[k]),
                "scene": scenes[k],
                "sha1": digests[k],
            }
            i = row_of.get(relpaths[k])
            if i is not None:  # same name, new content: replace in place
                vectors = vectors.copy() if vectors is self.vectors else vectors
                vectors[i] = v
                for c, val in row.items():
                    if c not in items.columns:
                        items[c] = ""
                    items.at[i, c] = val
                report.replaced += 1
            else:
                row_of[relpaths[k]] = len(items) + len(new_rows)
                new_rows.append(row)
                new_vecs.append(v)
                report.added += 1
        if new_rows:
            items = pd.concat([items, pd.DataFrame(new_rows)], ignore_index=True)
            vectors = np.concatenate([vectors, np.stack(new_vecs)]).astype(np.float32)
        self.items, self.vectors = _ordered(items), vectors
        return report

    def _set_metadata(self, by_relpath: dict[str, dict]) -> None:
        """Replace the metadata of indexed images (``relpath -> {column: value}``)."""
        if not by_relpath:
            return
        items = self.items.copy()
        row_of = {r: i for i, r in enumerate(items["relpath"])}
        for rel, meta in by_relpath.items():
            for c, val in meta.items():
                if c in ITEM_COLUMNS:
                    continue
                if c not in items.columns:
                    items[c] = ""
                items.at[row_of[rel], c] = val
        self.items = _ordered(items)

    def update(
        self,
        source: str | os.PathLike | Collection,
        cache_dir: str | os.PathLike | None = None,
        stats: features.ExtractStats | None = None,
        **extract_kwargs,
    ) -> AddReport:
        """Add the images of a collection that are new or changed since the index was built."""
        col = source if isinstance(source, Collection) else load_collection(source)
        rel = [
            self._relpath(Path(p)) if Path(col.root).resolve() != Path(self.root).resolve() else r
            for p, r in zip(col.items["path"], col.items["relpath"])
        ]
        return self.add(
            col.items["path"].tolist(),
            col.items["scene"].tolist(),
            rel,
            cache_dir,
            stats,
            metadata=_metadata_records(col.items),
            **extract_kwargs,
        )

    def remove(self, relpaths: Sequence[str]) -> int:
        """Drop the images named ``relpaths``; returns how many were removed."""
        drop = self.items["relpath"].isin(set(relpaths)).to_numpy()
        if drop.any():
            self.items = self.items[~drop].reset_index(drop=True)
            self.vectors = self.vectors[~drop]
        return int(drop.sum())

    # ---- persistence

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the index into ``folder`` atomically (see the module docstring)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        items_csv = csv_text(_ordered(self.items)).encode("utf-8")
        vec = np.ascontiguousarray(self.vectors, dtype=np.float32)
        digest = self.vectors_digest()
        tag = models.identity({"items": items_csv.decode(), "vec": digest})
        vec_name, items_name = f"vectors-{tag}.npy", f"items-{tag}.csv"
        save_npy(folder / vec_name, vec)
        atomic_write_bytes(folder / items_name, items_csv)
        old = _read_header(folder) if (folder / INDEX_FILE).exists() else {}
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        header = {
            "format": FORMAT_VERSION,
            "name": self.name,
            "root": self.root,
            "n_images": len(self),
            "dim": int(vec.shape[1]) if vec.ndim == 2 else 0,
            "meta": self.meta,
            "checkpoint": self.checkpoint,
            "output": self.output,
            "mirror": bool(self.mirror),
            "preprocess": self.preprocess.to_dict(),
            "pipeline": self.config.to_dict(),
            "created": old.get("created", now),
            "updated": now,
            "vectors": vec_name,
            "items": items_name,
        }
        if self._fitted is not None and self._fitted_digest == digest:
            self._fitted.save(folder)
            head = folder / P.FittedPipeline.FILES[0]
            saved = json.loads(head.read_text(encoding="utf-8"))
            save_json(head, {**saved, "vectors_digest": self._fitted_digest})
        save_json(folder / INDEX_FILE, header)
        for stale in list(folder.glob("vectors-*.npy")) + list(folder.glob("items-*.csv")):
            if stale.name not in (vec_name, items_name):
                stale.unlink(missing_ok=True)
        self.folder = str(folder)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Index:
        """Read an index saved by :meth:`save`."""
        folder = Path(folder)
        header = _read_header(folder)
        rebuild = (f"rebuild it with `python -m cbir_utils index {header.get('root') or 'FOLDER'} "
                   f"--name {header.get('name', folder.name)}` (cached descriptors make it quick)")  # fmt: skip
        try:
            raw_items = (folder / header["items"]).read_bytes()
            vectors = np.load(folder / header["vectors"], allow_pickle=False)
            items = read_csv(io.BytesIO(raw_items), encoding="utf-8")
        except (OSError, KeyError) as err:
            raise InputError(f"The index in {folder} is incomplete ({err}); {rebuild}.") from err
        except (ValueError, EOFError, pd.errors.ParserError) as err:
            raise InputError(f"The index in {folder} is damaged ({err}); {rebuild}.") from err
        dim = int(header.get("dim", vectors.shape[1] if vectors.ndim == 2 else -1))
        if (
            len(vectors) != len(items)
            or list(items.columns[:4]) != list(ITEM_COLUMNS)
            or (len(items) > 0 and (vectors.ndim != 2 or vectors.shape[1] != dim))
        ):
            raise InputError(
                f"The index in {folder} is inconsistent (vectors vs items); {rebuild}."
            )
        tag = str(header["vectors"]).removeprefix("vectors-").removesuffix(".npy")
        vec = np.ascontiguousarray(vectors, dtype=np.float32)
        digest = _array_digest(vec)
        if models.identity({"items": raw_items.decode("utf-8"), "vec": digest}) != tag:
            raise InputError(
                f"The index in {folder} is damaged: {header['vectors']} or {header['items']} "
                f"is not what was written (their digest is {tag}); {rebuild}."
            )
        index = cls(
            vectors=vec,
            items=items,
            meta=header["meta"],
            checkpoint=header.get("checkpoint"),
            output=header.get("output", "descriptor"),
            mirror=bool(header.get("mirror", False)),
            root=header.get("root", ""),
            name=header.get("name", folder.name),
            config=_config_from_header(header),
            folder=str(folder),
        )
        index._digest = (vec, digest)  # checked above: not computed again
        return index

    def same_settings(self, meta: dict, mirror: bool, output: str) -> bool:
        """Whether vectors made with these settings are comparable with this index's."""
        return (
            models.identity(self.meta) == models.identity(meta)
            and bool(self.mirror) == bool(mirror)
            and self.output == output
        )

    # ---- the retrieval pipeline

    def fitted(
        self, store: V.LocalFeatureStore | None = None, progress: bool = True, verify: bool = True
    ) -> P.FittedPipeline:
        """The pipeline fitted on this index, read from its folder when saved for these vectors,
        else fitted now and written with the next :meth:`save`. ``verify=False`` leaves the
        verification graph to the graph shards and accepts a saved pipeline still waiting for it.
        """
        digest = self.vectors_digest()
        if self._fitted is not None and self._fitted_digest == digest:
            return self._fitted
        saved = Path(self.folder) / P.FittedPipeline.FILES[0] if self.folder else None
        loaded = None
        if saved is not None and saved.is_file():
            try:
                head = json.loads(saved.read_text(encoding="utf-8"))
                made = head.get("config")  # read as the header: a setting added since is at
                if (  # the value it was made with
                    head.get("vectors_digest") == digest
                    and isinstance(made, dict)
                    and PipelineConfig.from_dict(made) == self.config
                ):
                    loaded = P.FittedPipeline.load(self.folder, self.items["path"].tolist())
            except (ValueError, InputError) as err:  # derived data: fitted again, nothing lost
                warnings.warn(f"{err} It is fitted again.", stacklevel=2)
        if loaded is not None:
            if loaded.graph_pending and verify:
                raise InputError(
                    f"The verification graph of the index in {self.folder} is being made in "
                    "shards: when every graph shard is done, gather it with `python -m "
                    "cbir_utils index ... --graph-shards M --merge-graph`."
                )
            self._fitted, self._fitted_digest = loaded, digest
            return loaded
        self._fitted = P.FittedPipeline.fit(
            self.vectors, self.items["path"].tolist(), self.config, store, progress, verify=verify
        )
        self._fitted_digest = digest
        return self._fitted

    def vectors_digest(self) -> str:
        """The SHA-1 of the index's vectors (what its saved pipeline and graph parts carry),
        computed once for each vectors array (``add``/``remove`` replace the array)."""
        if self._digest[0] is not self.vectors:
            self._digest = (
                self.vectors,
                _array_digest(np.ascontiguousarray(self.vectors, np.float32)),
            )
        return self._digest[1]

    def query_names(
        self, paths: Sequence[str | os.PathLike], digests: Sequence[str] | None = None
    ) -> dict[str, str]:
        """Each query's name in the index: its relpath when its content is indexed, else its path."""
        digests = digests if digests is not None else [models.file_digest(p) for p in paths]
        row_of = {d: r for d, r in zip(self.items["sha1"], self.items["relpath"])}
        return {str(p): row_of.get(d, str(p)) for p, d in zip(paths, digests)}

    def search(
        self,
        paths: Sequence[str | os.PathLike],
        k: int = 9,
        box: Sequence[float] | None = None,
        exclude_self: bool = True,
        cache_dir: str | os.PathLike | None = None,
        stats: features.ExtractStats | None = None,
        store: V.LocalFeatureStore | None = None,
        fitted: P.FittedPipeline | None = None,
        digests: Sequence[str] | None = None,
        **extract_kwargs,
    ) -> pd.DataFrame:
        """Search with image files (or the region ``box`` of each), ranked as the collection's
        own images are; each query read, hashed and decoded once, :data:`QUERY_CHUNK` at a time.

        ``store``: local features kept between calls; ``fitted``: another pipeline to rank with.
        Returns a long table ``query, rank, candidate, score, scene, path``, ``inliers`` when
        re-ranked, then the candidate's metadata columns.
        """
        if len(self) == 0:
            raise InputError("The index is empty.")
        paths = [Path(p).expanduser() for p in paths]
        missing = [str(p) for p in paths if not image_file(p).is_file()]
        if missing:
            raise MissingFilesError(f"Query image not found: {missing[0]}")
        progress = extract_kwargs.get("progress", True)
        digests = list(digests) if digests is not None else [models.file_digest(p) for p in paths]
        row_of = {d: i for i, d in enumerate(self.items["sha1"])}
        exclude = [row_of.get(d) for d in digests] if exclude_self else None
        store = store if store is not None else V.LocalFeatureStore(cache_dir=_local_cache())
        fitted = fitted if fitted is not None else self.fitted(store, progress)
        rows = []
        for a in range(0, len(paths), QUERY_CHUNK):  # decoded images in memory: one chunk
            b = min(len(paths), a + QUERY_CHUNK)
            images = [load_image(p) for p in paths[a:b]]
            if box is not None:
                images = [crop_box(im, box) for im in images]
            keys = digests[a:b] if box is None else None  # a region is not cached
            qv = self.embedder.images(images, keys, cache_dir, stats, **extract_kwargs)
            ex = None if exclude is None else exclude[a:b]
            rows += self._rows(paths[a:b], fitted.rank(qv, images, k, ex, store, progress))
        columns = ["query", "rank", "candidate", "score", "scene", "path"]
        table = pd.DataFrame(rows, columns=[*columns, "inliers"])
        table = table if fitted.config.rerank else table[columns]
        return provenance.add_columns(table, self.items, on="candidate")

    def _rows(self, paths: Sequence[Path], ranking: P.Ranking) -> list[dict]:
        """The result rows of ranked queries."""
        rows = []
        for p, ids, scores, n_in in zip(paths, ranking.indices, ranking.scores, ranking.inliers):
            for rank, (i, s, n) in enumerate(zip(ids, scores, n_in), start=1):
                if i < 0:
                    continue
                it = self.items.iloc[int(i)]
                rows.append(
                    {
                        "query": str(p),
                        "rank": rank,
                        "candidate": it["relpath"],
                        "score": round(float(s), 6),
                        "scene": it["scene"],
                        "path": it["path"],
                        "inliers": int(n),
                    }
                )
        return rows


def pipeline_config(meta: dict, mirror: bool = False, **settings) -> PipelineConfig:
    """The pipeline of an index: the model's preprocessing, ``settings`` over the defaults."""
    fields = {
        "image_size": int(meta["image_size"]),
        "resize": meta.get("resize", "letterbox"),
        "grayscale": bool(meta.get("grayscale", True)),
        "descreen": float(meta.get("descreen", 0.0)),
        "find_photo": bool(meta.get("find_photo", False)),
        "pooling": meta.get("pooling", "avg"),
        "mirror": bool(mirror),
        **settings,
    }
    if not fields.get("rerank", True):
        fields["graph"] = False
    return PipelineConfig(**fields)


def shard_scales(shards_dir: Path, image_size: int, scales) -> list[tuple[int, Path]]:
    """Each input size of a sharded extraction and its folder (``size-<px>/`` when there
    are several scales; the shards folder itself for one)."""

    sizes = scaled_sizes(image_size, scales)
    return [(s, shards_dir if len(sizes) == 1 else shards_dir / f"size-{s}") for s in sizes]


def read_shards(
    out_dir: Path, num_shards: int | None
) -> tuple[np.ndarray, list[str], dict, pd.DataFrame]:
    """The finished shards of ``out_dir``: vectors and paths in collection order, the
    extraction's meta, and the images the shards left out (``path``, ``kind``, ``reason``)."""
    if num_shards is None:
        found = sorted(out_dir.glob("shard-*-of-*/meta.json"))
        if not found:
            raise MissingFilesError(f"No shard found in {out_dir}.")
        counts = {int(p.parent.name.rsplit("-", 1)[1]) for p in found}
        if len(counts) != 1:
            raise InputError(f"{out_dir} mixes shard counts {sorted(counts)}; pass num_shards.")
        num_shards = counts.pop()
    folders = [features.shard_dir(out_dir, s, num_shards) for s in range(num_shards)]
    missing = [f.name for f in folders if not (f / "vectors.npy").exists()]
    if missing:
        raise MissingFilesError(
            f"{len(missing)} of {num_shards} shard(s) in {out_dir} are missing or unfinished: "
            f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}. Run them first."
        )
    metas = [json.loads((f / "meta.json").read_text()) for f in folders]
    common = [{k: v for k, v in m.items() if k not in ("shard", "rows")} for m in metas]
    if any(c != common[0] for c in common[1:]):
        raise InputError(f"The shards in {out_dir} come from different extractions.")
    n_listed = int(common[0]["n_items"])
    parts, paths = [], []
    skipped = [pd.DataFrame(columns=list(features.SHARD_SKIPPED_COLUMNS))]
    for s, (f, m) in enumerate(zip(folders, metas)):
        expected = features.shard_rows(n_listed, s, num_shards)
        if m["rows"] != [expected.start, expected.stop]:
            raise InputError(f"{f} does not hold the rows of shard {s}.")
        vec = np.load(f / "vectors.npy", mmap_mode="r")
        lines = (f / "paths.txt").read_text(encoding="utf-8").splitlines()
        if (f / "skipped.csv").exists():
            skipped.append(read_csv(f / "skipped.csv"))
        n_bad = len(skipped[-1]) if (f / "skipped.csv").exists() else 0
        if len(vec) != len(lines) or len(vec) + n_bad != len(expected):
            raise InputError(
                f"{f} is incomplete: {len(vec)} vectors and {len(lines)} paths for "
                f"{len(expected)} rows ({n_bad} skipped)."
            )
        parts.append(vec)
        paths.extend(lines)
    vectors = np.concatenate(parts) if parts else np.zeros((0, int(common[0]["dim"])), np.float32)
    return vectors, paths, common[0], pd.concat(skipped, ignore_index=True)


def _config_from_header(header: dict) -> PipelineConfig:
    """An index's pipeline; an index made before it had one: single scale, cosine only."""
    saved = header.get("pipeline")
    if saved:
        return PipelineConfig.from_dict(saved)
    return pipeline_config(
        header["meta"], bool(header.get("mirror", False)), scales=(1.0,), whiten_dim=0,
        dba_k=0, qe_k=0, rerank=False, graph=False,
    )  # fmt: skip


def _local_cache() -> Path:
    return project.OUTPUTS_DIR / "cache" / "local"


def _metadata_records(items: pd.DataFrame) -> list[dict] | None:
    """Each row's metadata columns as a dict (``None`` when the table has none)."""

    cols = metadata_columns(items)
    return items[cols].to_dict("records") if cols else None


def _ordered(items: pd.DataFrame) -> pd.DataFrame:
    """Items with :data:`ITEM_COLUMNS` first, then the metadata columns; no missing values."""

    return items[[*ITEM_COLUMNS, *metadata_columns(items)]].fillna("").reset_index(drop=True)


def _default_cache() -> Path:
    return project.OUTPUTS_DIR / "cache"


def _array_digest(arr: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _read_header(folder: Path) -> dict:
    f = Path(folder) / INDEX_FILE
    if not f.is_file():
        raise MissingFilesError(
            f"No index in {folder} (no {INDEX_FILE}); build one with `python -m cbir_utils index`."
        )
    try:
        header = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{f} is not valid JSON: {err}") from err
    if header.get("format") != FORMAT_VERSION:
        raise InputError(
            f"{f} has index format {header.get('format')!r}, expected {FORMAT_VERSION}."
        )
    return header


def resolve_index(name_or_path: str | os.PathLike) -> Path:
    """An index folder from a path, or from a name under ``outputs/index/``."""
    p = Path(name_or_path).expanduser()
    if (p / INDEX_FILE).is_file():
        return p.resolve()

    named = project.OUTPUTS_DIR / "index" / str(name_or_path)
    if (named / INDEX_FILE).is_file():
        return named
    raise MissingFilesError(
        f"No index at {p} nor {named}; build one with `python -m cbir_utils index`."
    )
