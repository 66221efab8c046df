"""Extraction at scale: streamed to disk, resumable, sharded and merged into one index."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cbir_utils.engine import features, models
from cbir_utils.engine.index import read_shards
from cbir_utils.sources import data

SIZE = 96  # small inputs keep these tests fast; the pipeline is the same at any size
META = models.model_meta("efficientnet_lite0", "imagenet", "avg", SIZE)


class Crash(RuntimeError):
    """Simulates a job killed after some chunks."""


@pytest.fixture(scope="module")
def prep():
    return models.preprocess_from_meta(META)


@pytest.fixture(scope="module")
def paths(tiny_collection):
    return data.load_collection(tiny_collection).paths


@pytest.fixture(scope="module")
def reference(lite0, paths, prep):
    return features.extract(lite0, paths, prep, batch_size=4, progress=False)


def crash_after(n_chunks: int):
    calls = []

    def on_chunk(done: int, total: int) -> None:
        calls.append((done, total))
        if len(calls) == n_chunks:
            raise Crash(f"killed after {done}/{total}")

    return on_chunk, calls


def test_streamed_extract_equals_in_memory(tmp_path, lite0, paths, prep, reference):
    out = tmp_path / "sub" / "vectors.npy"
    got = features.extract(
        lite0, paths, prep, batch_size=8, num_workers=1, progress=False, out=out, threads=1
    )
    assert isinstance(got, np.memmap) and out.exists()
    assert got.shape == reference.shape
    np.testing.assert_allclose(got, reference, atol=1e-5)
    assert sorted(p.name for p in out.parent.iterdir()) == ["vectors.npy"]  # no partial left


def test_npy_row_writer_round_trip(tmp_path):
    path = tmp_path / "x.npy"
    with features.NpyRowWriter(path, (5, 3)) as w:
        w.write(3, np.full((2, 3), 2.0))
        w.write(0, np.arange(9, dtype=np.float32).reshape(3, 3))
        with pytest.raises(ValueError, match="outside"):
            w.write(4, np.zeros((2, 3)))
    x = np.load(path)
    assert x.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [2, 2, 2], [2, 2, 2]]


def test_shard_rows_partition():
    parts = [features.shard_rows(10, i, 3) for i in range(3)]
    assert [list(r) for r in parts] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    sizes = [len(features.shard_rows(1001, i, 7)) for i in range(7)]
    assert sum(sizes) == 1001 and max(sizes) - min(sizes) <= 1
    assert list(features.shard_rows(2, 2, 3)) == [1]
    with pytest.raises(ValueError, match="shard must be"):
        features.shard_rows(10, 3, 3)
    with pytest.raises(ValueError, match="num_shards"):
        features.shard_rows(10, 0, 0)


def test_two_shards_merge_to_the_single_run_index(tmp_path, lite0, paths, prep, reference):
    out = tmp_path / "shards"
    kw = dict(model_meta=META, batch_size=4, num_workers=0, progress=False, chunk_size=4)
    with pytest.raises(FileNotFoundError, match="shard"):
        read_shards(out, 2)
    # the jobs run independently, in any order
    r1 = features.extract_shard(lite0, paths, prep, out, 1, 2, **kw)
    with pytest.raises(FileNotFoundError, match="shard-00000-of-00002"):
        read_shards(out, 2)
    r0 = features.extract_shard(lite0, paths, prep, out, 0, 2, **kw)
    assert r0.complete and r1.complete
    assert (r0.computed, r1.computed) == (10, 10)
    vectors, merged, meta, skipped = read_shards(out, None)  # the shard count read from disk
    np.testing.assert_allclose(vectors, reference, atol=1e-5)
    assert merged == [str(p) for p in paths] and skipped.empty
    assert meta["model"]["image_size"] == SIZE and meta["num_shards"] == 2
    # a finished shard is not recomputed
    assert features.extract_shard(lite0, paths, prep, out, 0, 2, **kw).computed == 0


def test_shard_of_another_extraction_is_refused(tmp_path, lite0, paths, prep):
    out = tmp_path / "shards"
    kw = dict(batch_size=4, num_workers=0, progress=False)
    features.extract_shard(lite0, paths[:6], prep, out, 0, 2, model_meta=META, **kw)
    other = dict(META, pooling="gem")
    with pytest.raises(ValueError, match="another extraction.*model"):
        features.extract_shard(lite0, paths[:6], prep, out, 0, 2, model_meta=other, **kw)
    with pytest.raises(ValueError, match="another extraction.*collection_digest"):
        features.extract_shard(lite0, paths[1:7], prep, out, 0, 2, model_meta=META, **kw)


def test_killed_shard_resumes_without_recomputing(tmp_path, lite0, paths, prep, reference):
    out = tmp_path / "run"
    on_chunk, calls = crash_after(2)
    kw = dict(model_meta=META, batch_size=4, num_workers=1, progress=False, chunk_size=8)
    with pytest.raises(Crash):
        features.extract_shard(lite0, paths, prep, out, 0, 1, on_chunk=on_chunk, **kw)
    assert calls == [(8, 20), (16, 20)]
    folder = features.shard_dir(out, 0, 1)
    assert json.loads((folder / "progress.json").read_text())["done"] == 16
    assert not (folder / "vectors.npy").exists()  # unfinished shards are never merged
    res = features.extract_shard(lite0, paths, prep, out, 0, 1, **kw)
    assert (res.resumed_from, res.computed, res.complete) == (16, 4, True)
    np.testing.assert_allclose(read_shards(out, None)[0], reference, atol=1e-5)


def test_killed_cached_extraction_resumes(tmp_path, lite0, paths, prep, reference):
    cache = tmp_path / "cache"
    on_chunk, _ = crash_after(1)
    s1 = features.ExtractStats()
    kw = dict(batch_size=4, num_workers=0, progress=False, chunk_size=8)
    with pytest.raises(Crash):
        features.extract_cached(lite0, paths, prep, cache, META, stats=s1, on_chunk=on_chunk, **kw)
    assert s1.computed == 8
    s2 = features.ExtractStats()
    got = features.extract_cached(lite0, paths, prep, cache, META, stats=s2, **kw)
    assert (s2.computed, s2.cached) == (12, 8)
    np.testing.assert_allclose(got, reference, atol=1e-5)
    # one part per committed chunk, each with its keys
    folder = next(p for p in cache.iterdir() if p.is_dir())
    assert len(list(folder.glob("part-*.keys.json"))) == 3
    s3 = features.ExtractStats()
    features.extract_cached(lite0, paths, prep, cache, META, stats=s3, **kw)
    assert (s3.computed, s3.cached) == (0, 20)


def test_cache_reads_the_single_file_layout(tmp_path):
    folder = tmp_path / "key"
    folder.mkdir()
    np.save(folder / "vectors.npy", np.eye(2, 3, dtype=np.float32))
    (folder / "keys.json").write_text(json.dumps(["a", "b"]))
    cache = features.DescriptorCache(tmp_path, "key")
    cache.add(["b", "c"], np.ones((2, 3), dtype=np.float32))
    again = features.DescriptorCache(tmp_path, "key")
    assert again.keys == ["a", "b", "c"]
    np.testing.assert_array_equal(again.get(["c", "a"]), [[1, 1, 1], [1, 0, 0]])
    # a part whose keys file never got written (killed writer) is ignored
    np.save(folder / "part-zzz.npy", np.zeros((1, 3), dtype=np.float32))
    assert len(features.DescriptorCache(tmp_path, "key")) == 3


def test_shard_leaves_out_unusable_images_and_remembers_them(
    tmp_path, lite0, paths, prep, reference, monkeypatch
):
    broken = tmp_path / "torn.jpg"
    broken.write_bytes(paths[0].read_bytes()[:200])
    listing = [*paths[:3], broken, *paths[3:6]]  # shard 0 of 2: rows 0-2; shard 1: 3-6
    out = tmp_path / "shards"
    kw = dict(batch_size=4, progress=False, validate="decode")
    for s in (0, 1):
        res = features.extract_shard(lite0, listing, prep, out, s, 2, META, **kw)
        assert res.complete and res.skipped == (s == 1)
    # a finished shard is neither checked nor computed again
    checks = []
    monkeypatch.setattr(features, "check_image", lambda *a: checks.append(a))
    again = features.extract_shard(lite0, listing, prep, out, 1, 2, META, **kw)
    assert (again.computed, again.skipped, checks) == (0, 1, [])
    vectors, merged, _, skipped = read_shards(out, None)
    assert merged == [str(p) for p in paths[:6]]
    np.testing.assert_allclose(vectors, reference[:6], atol=1e-5)
    assert skipped["path"].tolist() == [str(broken)] and skipped["kind"].tolist() == ["truncated"]
