"""Adversarial inputs: what a hostile metadata file, verdicts file, IIIF server or damaged
index can make the tool do. Each case ends in a clear per-item reason or a one-line error,
never a live formula, a local file read, a script that runs, a silent loss or a traceback."""

from __future__ import annotations

import csv
import io
import shutil

import pandas as pd
import pytest

from cbir_utils import cli, paths, review
from cbir_utils.index import Index
from cbir_utils.io import neutralise, read_csv, restore, save_csv

FORMULA = '=HYPERLINK("http://evil.example/x","click")'
HOSTILE = [FORMULA, "+1+1", "-2+3", "@SUM(A1)", "\tTAB", "\r=CR", "'=already", "''-two"]
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _live(value: str) -> bool:
    """A cell a spreadsheet would run: a formula start that is not a plain number."""
    try:
        float(value)
        return False
    except ValueError:
        return value.startswith(FORMULA_START)


def _text(path) -> str:
    with open(path, encoding="utf-8", newline="") as fh:  # a cell's own \r kept
        return fh.read()


def _live_cells(text: str) -> list[str]:
    table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    cells = [*table.columns, *table.to_numpy().ravel().tolist()]
    return [c for c in cells if _live(c)]


def test_neutralise_round_trips_and_keeps_numbers(tmp_path):
    for v in [*HOSTILE, "plain", "", "'quoted", "-1.5", "+3", "2e-3", "-"]:
        assert restore(neutralise(v)) == v
        assert not _live(neutralise(v))
    assert neutralise("-1.5") == "-1.5" and neutralise(FORMULA) == "'" + FORMULA
    df = pd.DataFrame({"text": HOSTILE, "n": range(len(HOSTILE)), "x": [-0.5] * len(HOSTILE)})
    save_csv(tmp_path / "t.csv", df)
    assert _live_cells(_text(tmp_path / "t.csv")) == []
    back = read_csv(tmp_path / "t.csv")
    assert back["text"].tolist() == HOSTILE
    assert back["x"].tolist() == ["-0.5"] * len(HOSTILE)  # a number stays a number
    assert pd.read_csv(tmp_path / "t.csv")["n"].dtype.kind == "i"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny_collection):
    """The tiny collection with formulas in its metadata, indexed as 'hostile'."""
    base = tmp_path_factory.mktemp("hostile")
    root = base / "collection"
    shutil.copytree(tiny_collection, root)
    rels = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    meta = pd.DataFrame({
        "path": rels,
        "periodical": [HOSTILE[i % 6] for i in range(len(rels))],  # as people type them
        "date": [f"1915-0{1 + i % 9}-1{i % 10}" for i in range(len(rels))],
        "caption": [FORMULA] * len(rels),
        "source_url": ["javascript:alert(1)"] * len(rels),
    })  # fmt: skip
    meta.to_csv(root / "metadata.csv", index=False, quoting=csv.QUOTE_ALL)  # quotes the \r
    out = base / "outputs"
    mp = pytest.MonkeyPatch()
    mp.setattr(paths, "OUTPUTS_DIR", out)
    size = ["--image-size", "96", "--batch-size", "8", "--rerank-top-n", "5", "-q"]
    assert cli.main(["index", str(root), "--name", "hostile", *size]) == 0
    yield out, root, meta
    mp.undo()


def test_no_metadata_formula_is_live_in_any_csv(hostile, capsys, monkeypatch):
    out, root, meta = hostile
    monkeypatch.setattr(paths, "OUTPUTS_DIR", out)
    query = root / "scene_camera" / "camera_0.jpg"
    assert cli.main(["search", "hostile", str(query), "--top-k", "20", "-q"]) == 0
    text = capsys.readouterr().out
    assert FORMULA.split("(")[0] in text and _live_cells(text) == []
    assert cli.main(["search", "hostile", str(query), "--out", str(out / "s.csv"), "-q"]) == 0
    assert cli.main(["groups", "hostile", "-q"]) == 0
    csvs = sorted(out.rglob("*.csv"))
    names = {p.name for p in csvs}
    assert {"s.csv", "groups.csv", "circulation.csv"} <= names
    for p in csvs:
        assert _live_cells(_text(p)) == [], p
    # the index reads its own items back exactly
    items = Index.load(out / "index" / "hostile").items.set_index("relpath")
    assert items.loc[meta["path"], "caption"].tolist() == meta["caption"].tolist()
    assert items.loc[meta["path"], "periodical"].tolist() == meta["periodical"].tolist()


def test_verdicts_round_trip_and_their_exports_are_safe(hostile, capsys, monkeypatch, tmp_path):
    out, _, meta = hostile
    monkeypatch.setattr(paths, "OUTPUTS_DIR", out)
    a, b = meta["path"][0], meta["path"][1]
    rows = pd.DataFrame({
        "query": [a], "candidate": [b], "verdict": ["same_photo"], "time": ["2026-12-05T10:00:00Z"],
        "context": [FORMULA], "reviewer": ["=cmd|' /C calc'!A0"],
    })  # fmt: skip
    save_csv(tmp_path / "v.csv", rows)
    assert (
        cli.main(["verdicts", "import", str(tmp_path / "v.csv"), "--index", "hostile", "-q"]) == 0
    )
    hist = review.history(out / "index" / "hostile")
    assert hist[["context", "reviewer"]].values.tolist() == [[FORMULA, "=cmd|' /C calc'!A0"]]
    assert _live_cells(_text(out / "index" / "hostile" / review.VERDICTS_FILE)) == []
    assert cli.main(["verdicts", "list", "--index", "hostile", "-q"]) == 0
    assert _live_cells(capsys.readouterr().out) == []


def test_the_review_pages_export_is_spreadsheet_safe():
    """The page's JavaScript guards cells as :func:`cbir_utils.io.neutralise` does."""
    from cbir_utils import contact_sheet

    js = contact_sheet._VERDICT_JS
    assert "function cell" in js and '"\'" + v' in js
