"""Provenance metadata through the outputs, reprint lists and timelines, and the review loop
on the command line: index -> search page / groups -> verdicts import -> evaluate."""

from __future__ import annotations

import json
import shutil
import warnings
from datetime import date

import numpy as np
import pandas as pd
import pytest

from cbir_utils import cli, paths
from cbir_utils.engine.index import Index
from cbir_utils.evaluation import retrieval
from cbir_utils.evidence import circulation, groups, review
from cbir_utils.sources import data, provenance

pytestmark = pytest.mark.filterwarnings("ignore::cbir_utils.sources.provenance.MetadataWarning")
SIZE = ["--image-size", "128", "--batch-size", "8"]


def test_parse_date():
    d = provenance.parse_date("1916-03-12")
    assert (d.start, d.precision, d.label) == (date(1916, 3, 12), "day", "1916-03-12")
    assert provenance.parse_date(" 1916-3 ").label == "1916-03"
    y = provenance.parse_date("1916")
    assert (y.start, y.precision) == (date(1916, 1, 1), "year")
    assert y.ordinal == date(1916, 1, 1).toordinal() + 182  # mid-year for sorting
    assert provenance.parse_date("") is None and provenance.parse_date(None) is None
    for bad, why in (("12/03/1916", "not an ISO date"), ("1916-02-30", "no such date")):
        with pytest.raises(ValueError, match=why):
            provenance.parse_date(bad)


@pytest.fixture()
def with_metadata(tmp_path, tiny_collection):
    """The tiny collection copied with a metadata.csv: dates, an unknown column, a bad date."""
    root = tmp_path / "collection"
    shutil.copytree(tiny_collection, root)
    rels = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    rows = []
    for k, rel in enumerate(rels):
        v = int(rel[-5])  # printing number 0, 1, 2 of its scene
        rows.append(
            {
                "path": rel,
                "periodical": ["Le Miroir", "Excelsior", "The Graphic"][v],
                "date": ["1916-05-02", "1916-03", "1917"][v] if k != 4 else "le 3 mai",
                "page": str(v + 1),
                "archive_box": f"B{k:02d}",  # unknown to the package: kept as it is
            }
        )
    rows.append(
        {"path": "gone/missing.jpg", "periodical": "x", "date": "", "page": "", "archive_box": ""}
    )
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root, rels


def test_folder_metadata_and_bad_dates(with_metadata):
    root, rels = with_metadata
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        col = data.load_collection(root, validate="none")
    msgs = [str(w.message) for w in caught if issubclass(w.category, provenance.MetadataWarning)]
    assert any("1 date(s)" in m and "row 6" in m and "le 3 mai" in m for m in msgs), msgs
    assert any("name no image" in m and "gone/missing.jpg" in m for m in msgs), msgs
    assert list(col.items.columns) == [
        "relpath", "path", "scene", "periodical", "date", "page", "archive_box"
    ]  # fmt: skip
    assert len(col) == len(rels) and "metadata.csv" not in set(col.skipped["relpath"])
    assert col.metadata_problems[["row", "relpath"]].values.tolist() == [[6, rels[4]]]
    first = col.items.iloc[0]
    assert (first["periodical"], first["date"], first["archive_box"]) == (
        "Le Miroir",
        "1916-05-02",
        "B00",
    )


def test_manifest_columns_are_kept(tmp_path, tiny_collection):
    rels = sorted(p.relative_to(tiny_collection).as_posix() for p in tiny_collection.rglob("*.jpg"))
    m = tmp_path / "m.csv"
    pd.DataFrame(
        {"path": [str(tiny_collection / r) for r in rels[:4]], "scene": ["a", "a", "b", "b"],
         "Periodical": ["Le Matin"] * 4, "Shelfmark": ["FOL-LC2-1", "", "x", "y"]}
    ).to_csv(m, index=False)  # fmt: skip
    col = data.load_collection(m, validate="none")
    assert list(col.items.columns[3:]) == ["periodical", "shelfmark"]
    assert col.items["shelfmark"].tolist() == ["FOL-LC2-1", "", "x", "y"]


def test_reprint_list_sorted_by_date():
    names = ["a", "b", "c", "d"]
    items = pd.DataFrame(
        {"relpath": names, "periodical": ["P1", "P2", "P3", "P4"],
         "date": ["1916-05-02", "1916-03", "", "1916-03-01"], "page": ["1", "", "2", ""],
         "source_url": ["", "https://gallica.example/ark:/1", "", ""]}
    )  # fmt: skip
    verdicts = {("a", "b"): "same_photo", ("a", "d"): "not_reprint"}
    rl = circulation.reprint_list([0, 1, 2, 3], names, items, [1.0, 0.9, 0.8, 0.7], verdicts)
    # 1916-03-01 (a day) comes before 1916-03 (the month, taken at its middle); undated last
    assert rl["image"].tolist() == ["d", "b", "a", "c"]
    assert rl["first"].tolist() == [True, False, False, False]
    assert rl["verdict"].tolist() == ["not_reprint", "same_photo", "reference", ""]
    assert rl["link"].tolist()[1] == "https://gallica.example/ark:/1"


def test_timeline_figure(tmp_path, tiny_collection):
    imgs = sorted(tiny_collection.rglob("*.jpg"))[:4]
    names = [p.name for p in imgs]
    items = pd.DataFrame(
        {"relpath": names, "periodical": ["Le Miroir", "Excelsior", "Le Miroir", ""],
         "date": ["1916-05-02", "1916-03-12", "1916-07", ""], "page": ["3", "1", "", ""]}
    )  # fmt: skip
    rl = circulation.reprint_list(range(4), names, items, np.ones(4))
    fig = circulation.timeline_figure(rl, imgs, tmp_path / "t.png")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Excelsior", "Le Miroir"]
    texts = [t.get_text() for t in ax.texts]
    assert "first: 1916-03-12, p. 1" in texts and len(texts) == 3
    assert "1 printing(s) without a date" in ax.get_xlabel()
    assert (tmp_path / "t.png").stat().st_size > 5_000
    nodates = rl.assign(date="")
    assert circulation.timeline_figure(nodates, imgs) is None


def test_output_tables_carry_metadata(with_metadata):
    root, _ = with_metadata
    col = data.load_collection(root, validate="none")
    n = len(col)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    idx, sc = retrieval.ranked_lists(x, [0, 1], 3)
    t = retrieval.topk_table(col.items["relpath"], col.scenes, [0, 1], idx, sc, 3, col.items)
    assert {"periodical", "date", "page", "archive_box"} <= set(t.columns)
    row = col.items.set_index("relpath").loc[t["candidate"].iloc[0]]
    assert t["periodical"].iloc[0] == row["periodical"]
    g = groups.duplicate_groups(x, 0.99)
    gt = g.table(col.items["relpath"], col.scenes, col.items)
    assert (
        gt.set_index("image").loc[col.items["relpath"][3], "archive_box"]
        == col.items["archive_box"][3]
    )


@pytest.fixture()
def cli_outputs(tmp_path, monkeypatch):
    out = tmp_path / "outputs"
    monkeypatch.setattr(paths, "OUTPUTS_DIR", out)
    return out


def test_review_loop_on_the_command_line(with_metadata, cli_outputs, tmp_path, capsys):
    root, rels = with_metadata
    assert cli.main(["index", str(root), "--name", "prov", "-q", *SIZE]) == 0
    folder = cli_outputs / "index" / "prov"
    index = Index.load(folder)
    assert index.items["archive_box"].tolist()[:2] == ["B00", "B01"]  # metadata in the index
    # search with a collection image: a table with the candidates' provenance, and a review page
    query = root / rels[0]
    hits = tmp_path / "hits.csv"
    page = tmp_path / "review.html"
    assert cli.main(["search", "prov", str(query), "--out", str(hits), "--html", str(page),
                     "--top-k", "3", "--rerank-top-n", "0", "-q"]) == 0  # fmt: skip
    t = pd.read_csv(hits, dtype=str, keep_default_na=False)
    assert {"periodical", "date", "page", "archive_box", "verdict"} <= set(t.columns)
    assert set(t["verdict"]) == {""}
    text = page.read_text(encoding="utf-8")
    assert f'data-query="{rels[0]}"' in text  # an indexed query is named by its relpath
    assert text.count('class="verdict"') == 3
    # groups: circulation list and timelines
    assert cli.main(["groups", "prov", "-q"]) == 0
    gdir = cli_outputs / "groups" / "prov"
    gcsv = pd.read_csv(gdir / "groups.csv", dtype=str, keep_default_na=False)
    assert {"periodical", "date", "archive_box"} <= set(gcsv.columns)
    circ = pd.read_csv(gdir / "circulation.csv", dtype=str, keep_default_na=False)
    assert list(circ.columns) == ["group", *circulation.REPRINT_COLUMNS]
    for _, grp in circ.groupby("group"):
        dated = [provenance.parse_date(d) for d in grp["date"] if d and d != "le 3 mai"]
        assert [d.ordinal for d in dated] == sorted(d.ordinal for d in dated)
    assert sorted(p.name for p in (gdir / "timelines").iterdir())[0] == "group_001.png"
    # a historian confirms the true reprints of each scene and rejects one look-alike
    scenes = index.scenes
    rows = []
    for sc in sorted(set(scenes)):
        members = [r for r, s in zip(index.relpaths, scenes) if s == sc]
        rows += [{"query": members[0], "candidate": m, "verdict": "same_photo",
                  "time": "2026-12-01T10:00:00Z", "reviewer": "MC"} for m in members[1:]]  # fmt: skip
    rows.append({"query": index.relpaths[0], "candidate": index.relpaths[-1],
                 "verdict": "not_reprint", "time": "2026-12-01T10:05:00Z", "reviewer": "MC"})  # fmt: skip
    vfile = tmp_path / "verdicts.csv"
    pd.DataFrame(rows).to_csv(vfile, index=False)
    capsys.readouterr()
    assert cli.main(["verdicts", "import", str(vfile), "--index", "prov"]) == 0
    err = capsys.readouterr().err
    assert f"{len(rows)} decision(s) added" in err
    assert cli.main(["verdicts", "import", str(vfile), "--index", "prov"]) == 0
    assert f"0 decision(s) added, {len(rows)} already there" in capsys.readouterr().err
    # later searches show the verdicts
    assert cli.main(["search", "prov", str(query), "--out", str(hits), "--top-k", "3",
                     "--rerank-top-n", "0", "-q"]) == 0  # fmt: skip
    t = pd.read_csv(hits, dtype=str, keep_default_na=False)
    assert (t["verdict"] == "same_photo").sum() == 2  # its scene's two other printings
    # evaluate with the verdicts as ground truth equals evaluate with the scene labels
    assert cli.main(["evaluate", "prov", "--verdicts", "--rerank-top-n", "0", "-q"]) == 0
    by_verdicts = json.loads((cli_outputs / "evaluate" / "prov" / "metrics.json").read_text())
    assert cli.main(["evaluate", "prov", "--rerank-top-n", "0", "-q", "--run-name", "labels"]) == 0
    by_labels = json.loads((cli_outputs / "evaluate" / "labels" / "metrics.json").read_text())
    assert by_verdicts["all"]["n_queries"] == len(index) == by_labels["all"]["n_queries"]
    assert by_verdicts["all"]["mAP"] == pytest.approx(by_labels["all"]["mAP"], abs=1e-9)
    vl = review.labels_from_verdicts(index.relpaths, review.history(folder))
    assert vl.n_groups == len(set(scenes))
