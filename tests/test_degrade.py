"""Archive-scan degradations (the hard collection's printer): each one applied to a real
photo changes it, is the same for the same seed, and leaves the global random state alone."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from cbir_utils.sources import degrade
from tests.conftest import source_photo


@pytest.fixture(scope="module")
def small() -> Image.Image:
    return source_photo("camera").convert("L").resize((160, 160))


@pytest.mark.parametrize("name", list(degrade.DEGRADATIONS))
def test_each_degradation_changes_the_image_and_is_deterministic(small, name):
    state = (random.getstate(), np.random.get_state()[1].copy())
    a = degrade.apply(small, name, np.random.default_rng(3))
    b = degrade.apply(small, name, np.random.default_rng(3))
    assert a.mode == "L" and a.size == small.size
    assert np.array_equal(np.asarray(a), np.asarray(b))  # same seed, same printing
    diffs = [
        np.abs(np.asarray(x, dtype=float) - np.asarray(small, dtype=float)).mean()
        for x in [a] + [degrade.apply(small, name, np.random.default_rng(s)) for s in (4, 5)]
    ]
    assert max(diffs) > 0.5, f"{name} left the image (nearly) unchanged: {diffs}"
    assert len({round(d, 6) for d in diffs}) > 1  # other seeds, other printings
    assert random.getstate() == state[0] and np.array_equal(np.random.get_state()[1], state[1])


def test_degrade_draws_one_or_two_effects_and_jpeg(small):
    seen = set()
    for seed in range(12):
        im, effects = degrade.degrade(small, np.random.default_rng(seed))
        body = [e for e in effects if e != "jpeg"]
        assert 1 <= len(body) <= degrade.MAX_EFFECTS and im.mode == "L"
        assert body == [n for n in degrade.DEGRADATIONS if n in body]  # table order
        seen.update(effects)
    assert len(seen) >= 8  # the draws cover most of the table
    with pytest.raises(KeyError, match="unknown degradation"):
        degrade.apply(small, "smudge", np.random.default_rng(0))


def test_page_context_keeps_the_photo_at_its_box_among_text(small):
    for seed in range(6):
        page, info = degrade.page_context(small, np.random.default_rng(seed))
        x0, t, r, b = info["box"]
        assert (r - x0, b - t) == small.size and info["layout"] in ("side", "below")
        assert np.array_equal(np.asarray(page)[t:b, x0:r], np.asarray(small))  # pasted as is
        rest = np.asarray(page).copy()
        rest[t:b, x0:r] = 255
        assert (rest < 128).mean() > 0.01  # ink outside the photo: text, caption
        again, _ = degrade.page_context(small, np.random.default_rng(seed))
        assert np.array_equal(np.asarray(page), np.asarray(again))


def test_hard_printing_is_deterministic_and_records_what_it_did():
    from cbir_utils.sources import demo

    base = source_photo("coffee").resize((200, 133))
    kinds = set()
    for seed in range(8):
        a, rec = demo.hard_printing(base, np.random.default_rng(seed))
        b, _ = demo.hard_printing(base, np.random.default_rng(seed))
        assert np.array_equal(np.asarray(a), np.asarray(b)) and a.mode == "L"
        assert rec["output_size"] == list(a.size) and rec["degradations"]
        if rec["halftone"]:
            assert "dither" not in rec["degradations"]  # one screening per printing
        if rec["page_context"]:
            x0, t, r, b_ = rec["page_context"]["box"]
            assert 0 <= x0 < r <= a.width and 0 <= t < b_ <= a.height
        kinds.add(bool(rec["page_context"]))
    assert kinds == {True, False}  # some printings kept their page, some did not


def _rcc(files: dict[str, bytes], compress: set[str]) -> bytes:
    """A Qt resource bundle (format version 2) holding ``files``, written as Qt's rcc does."""
    import struct
    import zlib

    tree: dict = {}
    for path, raw in files.items():
        *dirs, leaf = path.split("/")
        node = tree
        for d in dirs:
            node = node.setdefault(d, {})
        node[leaf] = raw
    names, data, nodes = b"", b"", []

    def name_at(name: str) -> int:
        nonlocal names
        at, enc = len(names), name.encode("utf-16-be")
        names += struct.pack(">HI", len(name), 0) + enc
        return at

    nodes.append(None)  # the root, filled last
    queue = [(0, "", tree)]
    while queue:  # breadth first: a directory's children take consecutive indexes
        i, name, node = queue.pop(0)
        first = len(nodes)
        kids = sorted(node.items())
        nodes.extend([None] * len(kids))
        nodes[i] = struct.pack(">IHII", name_at(name) if i else 0, 2, len(kids), first) + bytes(8)
        for j, (kid, val) in enumerate(kids):
            if isinstance(val, dict):
                queue.append((first + j, kid, val))
                continue
            path = kid
            flags, blob = (1, struct.pack(">I", len(val)) + zlib.compress(val)) if (
                path in compress) else (0, val)  # fmt: skip
            nodes[first + j] = struct.pack(">IHHHI", name_at(kid), flags, 0, 0, len(data))
            nodes[first + j] += bytes(8)
            data += struct.pack(">I", len(blob)) + blob
    tree_b = b"".join(nodes)
    head = 24
    return (b"qres" + struct.pack(">IIIII", 2, head, head + len(tree_b),
            head + len(tree_b) + len(data), 0) + tree_b + data + names)  # fmt: skip


def test_qt_resource_bundle_read_and_hard_photos_unpacked(tmp_path):
    """The hard collection's GCompris photos come out of a Qt resource bundle: plain and
    zlib-compressed files are read, photos matching the pattern and the README (their
    licences) are unpacked once, and each photo is one scene named after it."""
    from cbir_utils.errors import InputError
    from cbir_utils.sources import demo, qt_resources

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "p.jpg")
    photo = (tmp_path / "p.jpg").read_bytes()
    files = {
        "gc/act/resource/france/eiffelTower.webp": photo,
        "gc/act/resource/egypt/redPyramid.webp": photo[::-1],
        "gc/act/resource/README": b"Copyright: someone\nLicense: CC0-1.0\n",
        "gc/act/act.qml": b"Item {}",
    }
    bundle = tmp_path / "pkg" / "x" / "usr" / "share" / "act.rcc"
    bundle.parent.mkdir(parents=True)
    bundle.write_bytes(_rcc(files, compress={"redPyramid.webp", "act.qml"}))
    assert qt_resources.read_bundle(bundle) == dict(sorted(files.items()))
    (tmp_path / "junk.rcc").write_bytes(b"not a bundle at all")
    with pytest.raises(InputError, match="not a Qt resource bundle"):
        qt_resources.read_bundle(tmp_path / "junk.rcc")

    found = {"usr/share/act.rcc": bundle}
    got = demo._bundled_photos("gc-data", tmp_path / "pkg", found, "act.rcc!*.webp")
    assert sorted(got) == ["debian:gc-data:act.rcc!egypt/redPyramid.webp",
                           "debian:gc-data:act.rcc!france/eiffelTower.webp"]  # fmt: skip
    assert got["debian:gc-data:act.rcc!france/eiffelTower.webp"].read_bytes() == photo
    assert (tmp_path / "pkg" / "rcc" / "act" / "README").read_text().startswith("Copyright")
    bundle.unlink()  # unpacked once: the bundle is not read again
    assert demo._bundled_photos("gc-data", tmp_path / "pkg", {}, "act.rcc!*.webp") == got
    # another pattern is unpacked from the bundle, never served from an earlier unpacking
    assert demo._bundled_photos("gc-data", tmp_path / "pkg", {}, "act.rcc!egypt/*") == {}

    wallpapers = [f"debian:plasma-workspace-wallpapers:{n}" for n in demo.HARD_PACKAGES[
        "plasma-workspace-wallpapers"]]  # fmt: skip
    pool = demo._hard_pool([*got, *wallpapers])
    assert len(pool) == 13 and all(s.region is None and len(s.sources) == 1 for s in pool)
    assert {"redpyramid", "eiffeltower", "grey", "summer1am"} <= {s.slug for s in pool}


def test_robustness_check_names_each_missed_target():
    """``robustness.py --check``: fine-tuned above pretrained held out, demo and check at the
    README's figures, classifier accuracy on check and hard, the hard collection's target."""
    import sys

    import pandas as pd

    from cbir_utils.paths import PROJECT_ROOT

    sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
    import robustness as R

    def table(hard_all, hard_ft_disjoint, check_acc):
        rows = []
        for coll, pre, ft in (("demo", 0.997, 1.0), ("check", 0.970, 0.981), ("hard", 0.57, None)):
            ft = hard_ft_disjoint if ft is None else ft
            for model, held, acc in ((R.PRETRAINED, pre, None), (R.FINETUNED, ft, check_acc)):
                for protocol in R.PROTOCOLS:
                    m = held if protocol == "disjoint" else (hard_all if coll == "hard" else 0.99)
                    rows.append(dict(collection=coll, model=model, protocol=protocol, mAP=m,
                                     **{"P@1": 0.99 if m > 0.9 else 0.5}, test_accuracy=acc))  # fmt: skip
        return pd.DataFrame(rows)

    assert R.check(table(0.95, 0.60, 0.9)) == []
    fails = R.check(table(0.66, 0.56, 0.7))
    assert len(fails) == 4, fails
    assert any("hard: fine-tuned held-out mAP 0.560 <= pretrained 0.570" in f for f in fails)
    assert any("check: classifier test accuracy 0.700" in f for f in fails)
    assert any("every image a query: mAP 0.660" in f for f in fails)
