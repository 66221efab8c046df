"""Awkward collections: singletons, empty and nested folders, odd names, messy manifests."""

from __future__ import annotations

import os
import shutil
import unicodedata

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cbir_utils.errors import CollectionError, MissingFilesError
from cbir_utils.evaluation import retrieval
from cbir_utils.io import save_csv
from cbir_utils.sources import data


def _img(path, value: int = 128, size=(12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)


def _unit(deg: float) -> list[float]:
    return [np.cos(np.radians(deg)), np.sin(np.radians(deg))]


def test_singletons_are_distractors_not_queries(tmp_path):
    # A (3 images), B (2), C (1: a singleton), U (unlabelled, top level)
    rels = ["A/1.png", "A/2.png", "A/3.png", "B/1.png", "B/2.png", "C/1.png", "U.png"]
    for i, r in enumerate(rels):
        _img(tmp_path / r, 20 * i)
    col = data.load_collection(tmp_path, progress=False)
    assert list(col.items["relpath"]) == rels
    assert list(col.scenes) == ["A", "A", "A", "B", "B", "C", ""]
    # descriptors on the unit circle: A at 0, 12, 30 degrees; B at 90, 100; C at 5; U at 180
    desc = np.array([_unit(d) for d in (0, 12, 30, 90, 100, 5, 180)], dtype=np.float32)
    split = data.make_split(col.items, seed=0, heldout_frac=0.5)
    q = retrieval.protocol_queries(split, "all")
    assert list(q) == [0, 1, 2, 3, 4, 5]  # labelled images; the singleton is asked too...
    ev = retrieval.evaluate(desc, col.scenes, q, threshold=0.5, ks=(1,))
    # ...but, with no relevant image, it is excluded from the means and counted
    assert ev.ranking.n_queries == 5 and ev.ranking.n_queries_without_relevant == 1
    # hand-computed APs: A1 7/12 (C intrudes at rank 1), A2 7/12, A3 10/12, B1 = B2 = 1
    assert ev.ranking.map == pytest.approx(0.8)
    # the singleton is still a candidate (a distractor) in the others' rankings
    top = retrieval.topk_table(col.items["relpath"], col.scenes, q, ev.indices, ev.scores, 1)
    assert top.loc[top["query"] == "A/1.png", "candidate"].item() == "C/1.png"


def test_split_keeps_singletons_in_train(tmp_path):
    for s in range(6):
        for i in range(1 if s < 3 else 4):  # three singleton scenes, three of 4 images
            _img(tmp_path / f"s{s}" / f"{i}.png", 10 * s + i)
    col = data.load_collection(tmp_path, progress=False)
    for seed in range(5):
        split = data.make_split(col.items, seed=seed, heldout_frac=0.5)
        singles = split[split["scene"].isin(["s0", "s1", "s2"])]
        assert (singles["split"] == "train").all()
        assert (
            split.groupby("scene")["split"]
            .apply(lambda s: (s == "heldout").all() or "train" in set(s))
            .all()
        )


def test_empty_nested_and_hidden_folders(tmp_path):
    (tmp_path / "empty_scene").mkdir()
    (tmp_path / "scene_a" / "empty" / "deeper").mkdir(parents=True)
    _img(tmp_path / "scene_a" / "1918" / "front page" / "x.png")
    _img(tmp_path / "scene_a" / "y.png")
    _img(tmp_path / "scene_b" / "z.png")
    _img(tmp_path / "scene_b" / ".thumbnails" / "z.png")
    _img(tmp_path / "__MACOSX" / "scene_b" / "z.png")
    col = data.load_collection(tmp_path, progress=False)
    assert dict(zip(col.items["relpath"], col.scenes)) == {
        "scene_a/1918/front page/x.png": "scene_a",
        "scene_a/y.png": "scene_a",
        "scene_b/z.png": "scene_b",
    }
    assert col.scene_counts().to_dict() == {"scene_a": 2, "scene_b": 1}


def test_unicode_spaces_and_duplicate_names(tmp_path, tiny_collection):
    nfc = "Scène d'Ypres 1915"
    nfd = unicodedata.normalize("NFD", "Scène du Chemin des Dames")
    src = tiny_collection / "scene_coffee" / "coffee_0.jpg"
    for folder in (nfc, nfd, "Œuvres (copie)"):
        (tmp_path / folder).mkdir()
        shutil.copy(src, tmp_path / folder / "Le Miroir n°12 p3.JPG")  # same name, same bytes
    shutil.copy(tiny_collection / "scene_camera" / "camera_0.jpg", tmp_path / nfc / "2.jpeg")
    col = data.load_collection(tmp_path, progress=False)
    assert len(col) == 4 and len(set(col.items["relpath"])) == 4
    assert set(col.scenes) == {nfc, unicodedata.normalize("NFC", nfd), "Œuvres (copie)"}
    assert all(unicodedata.is_normalized("NFC", s) for s in col.scenes)
    assert all(os.path.isfile(p) for p in col.paths)
    # written and read back as UTF-8 without loss (split, top-k tables...)
    split = data.make_split(col.items, seed=0)
    path = save_csv(tmp_path.parent / f"{tmp_path.name}_split.csv", split)
    back = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(back["relpath"]) == list(col.items["relpath"])
    # identical files in three scenes are three images (each retrievable), same pixels
    same = [p for p in col.paths if p.name == "Le Miroir n°12 p3.JPG"]
    assert len(same) == 3 and len({str(p) for p in same}) == 3
    arrays = [np.asarray(data.load_image(p)) for p in same]
    assert all(np.array_equal(a, arrays[0]) for a in arrays[1:])
    assert not np.array_equal(np.asarray(data.load_image(tmp_path / nfc / "2.jpeg")), arrays[0])


def test_non_utf8_file_name_is_skipped_not_fatal(tmp_path):
    _img(tmp_path / "s" / "ok.png")
    try:
        with open(os.fsencode(tmp_path / "s") + b"/sc\xe8ne.png", "wb") as fh:  # Latin-1 name
            Image.new("L", (4, 4)).save(fh, "PNG")
    except (OSError, ValueError):
        pytest.skip("this file system refuses non-UTF-8 names")
    with pytest.warns(data.SkippedFilesWarning):
        col = data.load_collection(tmp_path, progress=False)
    assert list(col.items["relpath"]) == ["s/ok.png"]
    row = col.skipped.iloc[0]
    assert row["kind"] == "bad_name" and "rename" in row["reason"]
    row["relpath"].encode("utf-8")  # printable in skipped.csv
    data.save_skipped(col, tmp_path.parent / "run")


def test_symlinked_scene_folder_and_loop(tmp_path):
    store = tmp_path / "archive"
    _img(store / "a.png")
    root = tmp_path / "collection"
    (root / "linked_scene").parent.mkdir(parents=True)
    try:
        (root / "linked_scene").symlink_to(store, target_is_directory=True)
        (store / "loop").symlink_to(store, target_is_directory=True)
    except OSError:
        pytest.skip("no symlinks here")
    col = data.load_collection(root, progress=False)
    assert list(col.items["relpath"]) == ["linked_scene/a.png"]


def _manifest(path, rows, sep=",", bom=False) -> None:
    text = sep.join(["path", "scene"]) + "\n" + "".join(f"{p}{sep}{s}\n" for p, s in rows)
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8"))


def test_manifest_missing_files_listed(tmp_path):
    _img(tmp_path / "a" / "1.png")
    m = tmp_path / "m.csv"
    _manifest(m, [("a/1.png", "A"), ("a/absent.png", "A"), ("b/gone.tif", "B")])
    with pytest.raises(MissingFilesError, match=r"(?s)2 missing file.*a/absent.png.*b/gone.tif"):
        data.load_collection(m, progress=False)
    with pytest.raises(FileNotFoundError):  # still a FileNotFoundError for old callers
        data.load_collection(m, progress=False)


def test_manifest_from_excel_and_windows(tmp_path):
    name = unicodedata.normalize("NFD", "Tranchée 1.png")  # as stored by macOS
    _img(tmp_path / "imgs" / name)
    _img(tmp_path / "imgs" / "b.png", 50)
    (tmp_path / "imgs" / "empty.png").write_bytes(b"")
    m = tmp_path / "m.csv"
    rows = [
        ("imgs\\Tranchée 1.png", "Scène A"),  # Windows separator, NFC name
        ("imgs/b.png", "Scène A"),
        ("imgs/b.png", "Scène A"),  # duplicate row, same scene: kept once
        ("imgs/empty.png", "Scène B"),  # a bad file: skipped, not fatal
        ("", ""),  # blank line from a spreadsheet
    ]
    _manifest(m, rows, sep=";", bom=True)
    with pytest.warns(data.SkippedFilesWarning):
        col = data.load_collection(m, progress=False)
    assert list(col.items["relpath"]) == ["imgs/Tranchée 1.png", "imgs/b.png"]
    assert list(col.scenes) == ["Scène A", "Scène A"]
    assert list(col.skipped["kind"]) == ["empty"]


def test_manifest_conflicting_scenes_and_columns(tmp_path):
    _img(tmp_path / "x.png")
    m = tmp_path / "m.csv"
    _manifest(m, [("x.png", "A"), ("x.png", "B")])
    with pytest.raises(CollectionError, match=r"(?s)more than one scene.*x.png"):
        data.load_collection(m, progress=False)
    m.write_text("file,label\nx.png,A\n")
    with pytest.raises(CollectionError, match="'path' and 'scene'"):
        data.load_collection(m, progress=False)
