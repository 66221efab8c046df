"""Review verdicts: the file format, import into an index folder, labels from confirmed pairs,
the notebook widget, and the HTML pages driven in a real headless Chromium (selenium)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cbir_utils.errors import CollectionError
from cbir_utils.evidence import contact_sheet as cs
from cbir_utils.evidence import groups, review


def _write(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_read_verdicts_leaves_out_bad_rows(tmp_path):
    f = _write(
        tmp_path / "v.csv",
        [
            {
                "query": "a.jpg",
                "candidate": "b.jpg",
                "verdict": "same_photo",
                "time": "2026-01-02T10:00:00Z",
            },
            {"query": "a.jpg", "candidate": "c.jpg", "verdict": "maybe", "time": ""},
            {"query": "", "candidate": "c.jpg", "verdict": "not_reprint", "time": ""},
            {"query": "a.jpg", "candidate": "d.jpg", "verdict": "same_scene", "time": "yesterday"},
        ],
    )
    vf = review.read_verdicts(f)
    assert vf.rows["candidate"].tolist() == ["b.jpg"]
    assert vf.bad["line"].tolist() == [3, 4, 5]  # header is line 1
    assert "unknown verdict 'maybe'" in vf.bad["reason"].iloc[0]
    assert "unreadable time" in vf.bad["reason"].iloc[2]
    with pytest.raises(CollectionError, match="lacks column"):
        review.read_verdicts(_write(tmp_path / "x.csv", [{"query": "a", "verdict": "same_photo"}]))


def test_import_keeps_history_and_last_decision_wins(tmp_path):
    folder = tmp_path / "index"
    folder.mkdir()
    first = _write(
        tmp_path / "v1.csv",
        [
            {
                "query": "a.jpg",
                "candidate": "b.jpg",
                "verdict": "not_reprint",
                "time": "2026-01-01T10:00:00Z",
                "reviewer": "AB",
            },
            {
                "query": "a.jpg",
                "candidate": "c.jpg",
                "verdict": "same_photo",
                "time": "2026-01-01T10:01:00Z",
                "reviewer": "AB",
            },
        ],
    )
    r1 = review.import_verdicts(first, folder, known=["a.jpg", "b.jpg", "c.jpg"])
    assert (r1.added, r1.already, r1.n_pairs, r1.unknown_images) == (2, 0, 2, [])
    # a second reviewer reverses a -> b, written the other way round (b as the query)
    second = _write(
        tmp_path / "v2.csv",
        [
            {
                "query": "b.jpg",
                "candidate": "a.jpg",
                "verdict": "same_photo",
                "time": "2026-01-03T09:00:00Z",
                "reviewer": "CD",
            },
            {
                "query": "a.jpg",
                "candidate": "c.jpg",
                "verdict": "same_photo",
                "time": "2026-01-01T10:01:00Z",
                "reviewer": "AB",
            },
            {
                "query": "a.jpg",
                "candidate": "zz.jpg",
                "verdict": "same_scene",
                "time": "2026-01-03T09:01:00Z",
                "reviewer": "CD",
            },
        ],
    )
    r2 = review.import_verdicts(second, folder, known=["a.jpg", "b.jpg", "c.jpg"])
    assert (r2.added, r2.already) == (2, 1)  # the repeated a -> c decision is not added twice
    assert r2.unknown_images == ["zz.jpg"]
    hist = review.history(folder)
    assert len(hist) == 4  # nothing lost: the reversed decision is still in the history
    assert hist["verdict"].tolist()[:2] == ["not_reprint", "same_photo"]
    lk = review.lookup(hist)
    assert lk[("a.jpg", "b.jpg")] == lk[("b.jpg", "a.jpg")] == "same_photo"  # latest wins
    # importing the same file again changes nothing
    r3 = review.import_verdicts(second, folder)
    assert (r3.added, r3.already) == (0, 3) and len(review.history(folder)) == 4


def test_labels_from_verdicts_join_confirmed_pairs():
    names = ["a", "b", "c", "d", "e", "f"]
    decisions = pd.DataFrame(
        [
            {
                "query": "a",
                "candidate": "b",
                "verdict": "same_photo",
                "time": "2026-01-01T00:00:00Z",
            },
            {
                "query": "c",
                "candidate": "b",
                "verdict": "same_photo",
                "time": "2026-01-01T00:00:01Z",
            },
            {
                "query": "a",
                "candidate": "c",
                "verdict": "not_reprint",
                "time": "2026-01-01T00:00:02Z",
            },
            {
                "query": "d",
                "candidate": "e",
                "verdict": "same_scene",
                "time": "2026-01-01T00:00:03Z",
            },
            {
                "query": "f",
                "candidate": "a",
                "verdict": "not_reprint",
                "time": "2026-01-01T00:00:04Z",
            },
        ]
    ).assign(context="", reviewer="")
    vl = review.labels_from_verdicts(names, decisions)
    # a-b and b-c confirmed: one group {a, b, c}; d-e only the same scene; f rejected
    assert vl.labels.tolist() == ["verified-001"] * 3 + ["", "", ""]
    assert vl.n_groups == 1
    assert vl.conflicts[["query", "candidate"]].values.tolist() == [["a", "c"]]
    both = review.labels_from_verdicts(names, decisions, confirmed=("same_photo", "same_scene"))
    assert both.labels.tolist() == ["verified-001"] * 3 + ["verified-002"] * 2 + [""]


def test_attach_and_append(tmp_path):
    f = tmp_path / "v.csv"
    review.append_decision(f, "q.jpg", "b.jpg", "same_photo", "search", "AB")
    review.append_decision(f, "b.jpg", "q.jpg", "not_reprint", "search", "AB")
    with pytest.raises(ValueError, match="Unknown verdict"):
        review.append_decision(f, "q.jpg", "b.jpg", "yes")
    table = pd.DataFrame({"query": ["q.jpg", "q.jpg"], "candidate": ["b.jpg", "c.jpg"]})
    out = review.attach(table, review.read_verdicts(f).rows)
    assert out["verdict"].tolist() == ["not_reprint", ""]


def test_review_widget_buttons_write_verdicts(tmp_path, tiny_collection):
    pytest.importorskip("ipywidgets")
    imgs = sorted(tiny_collection.rglob("*.jpg"))
    out = tmp_path / "verdicts.csv"
    w = review.ReviewWidget(
        (imgs[0], "s0/q.jpg"),
        [
            (imgs[1], "s0/b.jpg", 0.91, "Le Miroir, 1916-03-12, p. 3"),
            (imgs[5], "s1/c.jpg", 0.4, ""),
        ],
        out,
        reviewer="AB",
        draw_matches=False,
    )
    w.buttons["s0/b.jpg"]["same_photo"].click()
    w.buttons["s1/c.jpg"]["not_reprint"].click()
    w.buttons["s0/b.jpg"]["same_scene"].click()  # changed her mind
    rows = review.read_verdicts(out).rows
    assert rows[["candidate", "verdict", "reviewer"]].values.tolist() == [
        ["s0/b.jpg", "same_photo", "AB"],
        ["s1/c.jpg", "not_reprint", "AB"],
        ["s0/b.jpg", "same_scene", "AB"],
    ]
    assert review.lookup(rows)[("s0/q.jpg", "s0/b.jpg")] == "same_scene"
    assert w.buttons["s0/b.jpg"]["same_scene"].button_style == "success"
    assert w.buttons["s0/b.jpg"]["same_photo"].button_style == ""


# --------------------------------------------------------------------------- real browser


def _driver(download_dir: Path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    browser = next(
        (
            shutil.which(b)
            for b in ("chromium", "chromium-browser", "google-chrome")
            if shutil.which(b)
        ),
        None,
    )
    driver_bin = shutil.which("chromedriver")
    if not browser or not driver_bin:
        pytest.skip(
            "Chromium and chromedriver are needed (Debian: apt-get install chromium chromium-driver)"
        )
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(flag)
    opts.add_experimental_option(
        "prefs",
        {"download.default_directory": str(download_dir), "download.prompt_for_download": False},
    )
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver_bin), options=opts)
    drv.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)}
    )
    return drv


@pytest.fixture()
def sheet(tmp_path, tiny_collection):
    """A contact sheet of two planted groups with provenance, one verdict already imported."""
    imgs = sorted(tiny_collection.rglob("*.jpg"))
    paths = imgs[:3] + imgs[5:7]
    names = [p.relative_to(tiny_collection).as_posix() for p in paths]
    r = np.deg2rad([0, 2, 4, 90, 92])
    g = groups.duplicate_groups(np.c_[np.cos(r), np.sin(r)].astype(np.float32), 0.9)
    items = pd.DataFrame(
        {
            "relpath": names,
            "periodical": ["Le Miroir", "Excelsior", "The Graphic", "Le Matin", ""],
            "date": ["1916-03-12", "1916-02", "1916-04-01", "1915", ""],
            "page": ["3", "1", "12", "", ""],
        }
    )
    before = pd.DataFrame(
        [{"query": names[3], "candidate": names[4], "verdict": "not_reprint",
          "time": "2026-01-01T00:00:00Z", "context": "group 2", "reviewer": "XY"}]
    )  # fmt: skip
    html = cs.contact_sheet_html(
        g, paths, tmp_path / "site" / "sheet.html", names=names, items=items,
        verdicts=before, store="tiny", progress=False,
    )  # fmt: skip
    return html, g, names


def _ready(drv, timeout: float = 10.0) -> None:
    """Wait until the page's script has restored the stored decisions (after a load)."""
    deadline = time.time() + timeout
    body = drv.find_element("tag name", "body")
    while body.get_attribute("data-review-ready") != "1" and time.time() < deadline:
        time.sleep(0.05)
        body = drv.find_element("tag name", "body")
    assert body.get_attribute("data-review-ready") == "1"


def _reload(drv, restored, seconds: float = 20.0) -> None:
    """Reload the page until ``restored(drv)`` holds, for at most ``seconds``: Chromium hands
    a page's localStorage writes to its browser process when it gets to them, so a reload
    right after a click may come first (seen twice in CI, once after waiting 2 s). Decisions
    that never come back fail the assertion that follows."""
    deadline = time.time() + seconds
    while True:
        time.sleep(1.0)
        drv.refresh()
        _ready(drv)
        if restored(drv) or time.time() > deadline:
            return


def _pressed(drv) -> dict[tuple[str, str], str]:
    out = {}
    for box in drv.find_elements("css selector", ".verdict"):
        on = [
            b.get_attribute("data-v")
            for b in box.find_elements("css selector", "button")
            if b.get_attribute("aria-pressed") == "true"
        ]
        out[(box.get_attribute("data-query"), box.get_attribute("data-candidate"))] = (
            on[0] if on else ""
        )
    return out


def test_contact_sheet_review_in_chromium(sheet, tmp_path):
    html, g, names = sheet
    text = html.read_text(encoding="utf-8")
    assert "Le Miroir, 1916-03-12, p. 3" in text  # provenance in the caption
    assert "Reprint list, by date" in text
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    drv = _driver(downloads)
    try:
        drv.get(html.as_uri())
        assert drv.find_element("tag name", "body").get_attribute("data-review-ready") == "1"
        # group references: the members closest to their centres (the middle image in group 1)
        ref1, ref2 = (names[int(m[0])] for m in g.groups())
        assert (ref1, ref2) == (names[1], names[3])
        state = _pressed(drv)
        assert set(state) == {(ref1, names[0]), (ref1, names[2]), (ref2, names[4])}
        assert state[(ref2, names[4])] == "not_reprint"  # the imported verdict is shown
        drv.find_element("id", "reviewer").send_keys("Marie C.")
        for cand, v in (
            (names[0], "same_photo"),
            (names[2], "same_scene"),
            (names[4], "same_photo"),
        ):
            ref = ref2 if cand == names[4] else ref1
            box = drv.find_element(
                "css selector", f'.verdict[data-query="{ref}"][data-candidate="{cand}"]'
            )
            box.find_element("css selector", f'button[data-v="{v}"]').click()
        assert drv.find_element("id", "n-decisions").text == "3"
        decided = {
            (ref1, names[0]): "same_photo",
            (ref1, names[2]): "same_scene",
            (ref2, names[4]): "same_photo",  # newer than the imported "not a reprint"
        }
        _reload(drv, lambda d: _pressed(d) == decided)  # decisions persist in the browser
        assert _pressed(drv) == decided
        assert drv.find_element("id", "reviewer").get_attribute("value") == "Marie C."
        drv.find_element("id", "export").click()
        target = downloads / "verdicts.csv"
        deadline = time.time() + 20
        while not target.is_file() and time.time() < deadline:
            time.sleep(0.2)
        assert target.is_file(), list(downloads.iterdir())
        errors = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        drv.quit()
    got = review.read_verdicts(target)
    assert got.bad.empty
    rows = got.rows
    assert rows[["query", "candidate", "verdict"]].values.tolist() == [
        [ref1, names[0], "same_photo"],
        [ref1, names[2], "same_scene"],
        [ref2, names[4], "same_photo"],
    ]
    assert set(rows["reviewer"]) == {"Marie C."}
    assert rows["context"].tolist() == ["group 1", "group 1", "group 2"]
    assert pd.to_datetime(rows["time"], utc=True, format="ISO8601").notna().all()
    # ...and back into an index folder: the history has the old and the new decision
    folder = tmp_path / "index"
    folder.mkdir()
    pd.DataFrame(
        [{"query": ref2, "candidate": names[4], "verdict": "not_reprint",
          "time": "2026-01-01T00:00:00Z", "context": "group 2", "reviewer": "XY"}]
    ).to_csv(folder / review.VERDICTS_FILE, index=False)  # fmt: skip
    rep = review.import_verdicts(target, folder, known=names)
    assert (rep.added, rep.n_pairs) == (3, 3)
    assert review.lookup(review.history(folder))[(names[4], ref2)] == "same_photo"


def test_search_page_review_in_chromium(tmp_path, tiny_collection):
    imgs = sorted(tiny_collection.rglob("*.jpg"))
    table = pd.DataFrame(
        {
            "query": [str(imgs[0])] * 2 + [str(imgs[5])],
            "rank": [1, 2, 1],
            "candidate": ["s0/b.jpg", "s1/c.jpg", "s0/b.jpg"],
            "score": [0.93, 0.41, 0.38],
            "path": [str(imgs[1]), str(imgs[6]), str(imgs[1])],
            "periodical": ["Le Miroir", "", "Le Miroir"],
            "date": ["1916-03-12", "not a date", "1916-03-12"],
        }
    )
    html = cs.search_results_html(
        table, tmp_path / "search.html", query_names={str(imgs[0]): "s0/a.jpg"}, store="tiny",
        progress=False,
    )  # fmt: skip
    downloads = tmp_path / "dl"
    downloads.mkdir()
    drv = _driver(downloads)
    try:
        drv.get(html.as_uri())
        _ready(drv)
        assert len(drv.find_elements("css selector", "section.query")) == 2
        box = drv.find_element(
            "css selector", '.verdict[data-query="s0/a.jpg"][data-candidate="s0/b.jpg"]'
        )
        box.find_element("css selector", 'button[data-v="same_photo"]').click()
        pair = ("s0/a.jpg", "s0/b.jpg")
        _reload(drv, lambda d: _pressed(d)[pair] == "same_photo")  # restored after load
        assert _pressed(drv)[pair] == "same_photo"
        # the other query's box about the same candidate is another pair: untouched
        assert _pressed(drv)[(str(imgs[5]), "s0/b.jpg")] == ""
        # the reprint list by date shows the decision too
        cell = drv.find_element(
            "css selector", 'td.rv[data-query="s0/a.jpg"][data-candidate="s0/b.jpg"]'
        )
        assert cell.get_attribute("textContent") == "same photograph"
        drv.find_element("id", "export").click()
        target = downloads / "verdicts.csv"
        deadline = time.time() + 20
        while not target.is_file() and time.time() < deadline:
            time.sleep(0.2)
        assert not [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        drv.quit()
    rows = review.read_verdicts(target).rows
    assert rows[["query", "candidate", "verdict", "context"]].values.tolist() == [
        ["s0/a.jpg", "s0/b.jpg", "same_photo", "search"]
    ]
