"""Adversarial inputs: what a hostile metadata file, verdicts file, IIIF server or damaged
index can make the tool do. Each case ends in a clear per-item reason or a one-line error,
never a live formula, a local file read, a script that runs, a silent loss or a traceback."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cbir_utils import cli, paths
from cbir_utils.engine.index import Index
from cbir_utils.errors import CollectionError, InputError
from cbir_utils.evidence import review
from cbir_utils.io import neutralise, read_csv, restore, save_csv
from cbir_utils.sources import iiif

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
    from cbir_utils.evidence import contact_sheet

    js = contact_sheet._VERDICT_JS
    assert "function cell" in js and '"\'" + v' in js


# --------------------------------------------------------------------------- a hostile IIIF server


def _manifest(base: str, name: str, images: list[str]) -> dict:
    """A v3 manifest whose canvases show ``images`` (ids of the server, or any URL)."""

    def canvas(n: int, image: str) -> dict:
        cid = f"{base}/{name}/canvas/{n}"
        own = ":" not in image and not image.startswith(("/", "~"))
        body = {"id": f"{base}/img/{image}.jpg" if own else image, "type": "Image"}
        return {"id": cid, "type": "Canvas", "label": {"none": [str(n)]}, "items": [{
            "id": f"{cid}/p", "type": "AnnotationPage", "items": [{
                "id": f"{cid}/a", "type": "Annotation", "motivation": "painting",
                "target": cid, "body": body}]}]}  # fmt: skip

    return {"id": f"{base}/{name}.json", "type": "Manifest", "label": {"none": [name]},
            "items": [canvas(n, im) for n, im in enumerate(images, start=1)]}  # fmt: skip


@pytest.fixture(scope="module")
def evil_server(tiny_collection, tmp_path_factory):
    """Serves good images and manifests beside hostile ones."""
    files = sorted(tiny_collection.rglob("*.jpg"))
    secret = tmp_path_factory.mktemp("secret") / "secret.json"
    secret.write_text(json.dumps(_manifest("http://x", "SECRET-LABEL", ["good0"])))
    state: dict = {"base": "", "secret": secret}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, body: bytes, ctype: str, length: bool = True):
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            if length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def do_GET(self):  # noqa: N802 - the http.server API
            base, path = state["base"], self.path
            docs = {
                "/good.json": _manifest(base, "good", ["good0", "good1"]),
                "/links.json": _manifest(base, "links", [
                    "good2", "file:///etc/passwd", "javascript:alert(1)", str(secret)]),
                "/members.json": {"id": f"{base}/members.json", "type": "Collection", "items": [
                    {"id": "/etc/passwd", "type": "Manifest"},
                    {"id": str(secret), "type": "Manifest"},
                    {"id": "~/secret.json", "type": "Manifest"},
                    {"id": "file://" + str(secret), "type": "Manifest"},
                    {"id": f"{base}/good.json", "type": "Manifest"}]},
                "/bad/list.json": [1, 2, 3],
                "/bad/null.json": None,
                "/bad/sequences.json": {"@type": "sc:Manifest", "sequences": "abc"},
                "/bad/items.json": {"type": "Manifest", "items": [1, 2]},
            }  # fmt: skip
            if path in docs:
                return self._send(json.dumps(docs[path]).encode(), "application/json")
            if path.startswith("/chain/"):  # each collection points to the next, without end
                n = int(path.split("/")[2].removesuffix(".json"))
                nxt = {"id": f"{base}/chain/{n + 1}.json", "type": "Collection"}
                doc = {"id": f"{base}{path}", "type": "Collection", "items": [nxt]}
                return self._send(json.dumps(doc).encode(), "application/json")
            if path.startswith("/img/good"):
                k = int(path.removeprefix("/img/good").removesuffix(".jpg"))
                return self._send(files[k].read_bytes(), "image/jpeg")
            if path == "/img/huge.jpg":  # 3 MB, announced
                return self._send(b"\xff\xd8" + b"\0" * 3_000_000, "image/jpeg")
            if path == "/img/huge-chunked.jpg":  # 3 MB, no length announced
                return self._send(b"\xff\xd8" + b"\0" * 3_000_000, "image/jpeg", length=False)
            if path == "/img/trickle.jpg":  # one byte at a time, each well within the timeout
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", "1000")
                self.end_headers()
                try:
                    for _ in range(1000):
                        self.wfile.write(b"\0")
                        self.wfile.flush()
                        time.sleep(0.2)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                return None
            self.send_response(404)
            self.end_headers()
            return None

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state["base"] = f"http://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield state
    httpd.shutdown()


LIMITS = iiif.FetchConfig(size=256, workers=3, timeout=1.0, retries=0, max_bytes=1_000_000,
                          deadline=1.5, max_documents=20, max_depth=5)  # fmt: skip


@pytest.fixture()
def iiif_outputs(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "OUTPUTS_DIR", tmp_path / "outputs")
    return tmp_path / "outputs"


def _fetch(source, config=LIMITS):
    result = iiif.fetch(source, config, progress=False)
    return read_csv(result.manifest), result.failures


def test_a_remote_collection_cannot_make_the_tool_read_local_files(evil_server, iiif_outputs):
    base = evil_server["base"]
    rows, failures = _fetch(f"{base}/members.json")
    assert len(rows) == 2 and "SECRET-LABEL" not in rows.to_csv()
    refused = failures[failures["kind"] == "not_http"]
    assert len(refused) == 4 and len(failures) == 4
    assert not any("exist" in r or "JSON" in r for r in refused["reason"])  # says nothing of them
    # images too: only http(s) is fetched; a page's link is never javascript:
    rows, failures = _fetch(f"{base}/links.json")
    assert len(rows) == 1 and set(failures["kind"]) == {"not_http"} and len(failures) == 3
    # the user's own manifest file is still read
    with pytest.raises(CollectionError, match="secret-label"):  # read; its image host is fake
        _fetch(str(evil_server["secret"]))


def test_downloads_are_limited_in_size_time_and_crawl(evil_server, iiif_outputs, tmp_path):
    base = evil_server["base"]
    m = tmp_path / "limits.json"
    m.write_text(
        json.dumps(_manifest(base, "limits", ["good3", "huge", "huge-chunked", "trickle"]))
    )
    t0 = time.monotonic()
    rows, failures = _fetch(str(m))
    assert time.monotonic() - t0 < 10
    assert len(rows) == 1
    kinds = {
        r.split()[0].rsplit("/", 1)[1]: k for k, r in zip(failures["kind"], failures["reason"])
    }
    assert kinds == {"huge.jpg": "too_large", "huge-chunked.jpg": "too_large",
                     "trickle.jpg": "deadline"}  # fmt: skip
    assert not list((iiif.cache_folder(str(m))).rglob("*huge*"))
    # a chain of collections: stopped by the depth, then by the number of documents
    with pytest.raises(CollectionError, match="No IIIF manifest could be read"):
        _fetch(f"{base}/chain/0.json")
    failures = iiif._read_source(f"{base}/chain/0.json", iiif.session(LIMITS), LIMITS,
                                 tmp_path / "c")[1]  # fmt: skip
    assert [f["kind"] for f in failures] == ["limit"] and "max_depth" in failures[0]["reason"]
    wide = iiif.FetchConfig(max_documents=7, max_depth=100, timeout=1.0, retries=0)
    failures = iiif._read_source(f"{base}/chain/0.json", iiif.session(wide), wide,
                                 tmp_path / "d")[1]  # fmt: skip
    assert [f["kind"] for f in failures] == ["limit"] and "max_documents" in failures[0]["reason"]


def test_malformed_manifests_are_skipped_sources_not_tracebacks(
    evil_server, iiif_outputs, tmp_path
):
    base = evil_server["base"]
    urls = tmp_path / "urls.txt"
    bad = ["list", "null", "sequences", "items"]
    urls.write_text("\n".join([*(f"{base}/bad/{b}.json" for b in bad), f"{base}/good.json"]))
    rows, failures = _fetch(str(urls))
    assert len(rows) == 2  # the good manifest is fetched in full
    assert set(failures["kind"]) == {"manifest"} and len(failures) == 4
    reasons = " ".join(failures["reason"])
    assert "JSON list" in reasons and "JSON NoneType" in reasons and "lists no image" in reasons
    # alone, a manifest whose items are not canvases lists no image: a one-line error
    with pytest.raises(CollectionError, match="list no image"):
        _fetch(f"{base}/bad/items.json")


# --------------------------------------------------------------------------- links and pages


def test_links_are_http_only_in_pages_and_csvs(hostile, monkeypatch):
    """The metadata's ``source_url`` is ``javascript:alert(1)``: no page or CSV links to it."""
    out, root, _ = hostile
    monkeypatch.setattr(paths, "OUTPUTS_DIR", out)
    page = out / "search.html"
    query = str(root / "scene_camera" / "camera_0.jpg")
    assert cli.main(["search", "hostile", query, "--html", str(page), "-q"]) == 0
    assert cli.main(["groups", "hostile", "-q"]) == 0
    pages = [page, *out.rglob("contact_sheet.html")]
    assert len(pages) == 2
    for p in pages:  # shown as text in a tooltip, never a link
        text = p.read_text(encoding="utf-8")
        assert "source_url: javascript:alert(1)" in text
        assert not re.search(r"href=[\"']?\s*javascript:", text, re.I), p
    circ = read_csv(next(out.rglob("circulation.csv")))
    assert "link" not in circ.columns or set(circ["link"]) <= {""}


def test_a_hostile_reviewer_name_cannot_break_the_review_page(tmp_path, tiny_collection):
    """Imported verdicts with a reviewer ``<!--<script>`` and a context that closes the
    script: the embedded JSON opens and closes nothing, and in Chromium the page's script
    runs (the imported decision is shown, the buttons work), nothing injected runs."""
    from test_review import _driver, _pressed, _ready

    from cbir_utils.evidence import contact_sheet as cs
    from cbir_utils.evidence import groups

    imgs = sorted(tiny_collection.rglob("*.jpg"))[:2]
    names = [p.relative_to(tiny_collection).as_posix() for p in imgs]
    g = groups.duplicate_groups(np.array([[1, 0], [1, 0.01]], dtype=np.float32), 0.9)
    hostile = pd.DataFrame([{
        "query": names[0], "candidate": names[1], "verdict": "not_reprint",
        "time": "2026-01-01T00:00:00Z", "context": "</script><script>document.title='pwned'",
        "reviewer": "<!--<script>"}])  # fmt: skip
    items = pd.DataFrame({"relpath": names, "source_url": ["javascript:alert(1)"] * 2})
    html = cs.contact_sheet_html(g, imgs, tmp_path / "sheet.html", names=names, items=items,
                                 verdicts=hostile, store="x", progress=False)  # fmt: skip
    text = html.read_text(encoding="utf-8")
    data = text.split('id="verdicts-initial">')[1].split("</script>")[0]
    assert "<" not in data and json.loads(data)[0]["reviewer"] == "<!--<script>"
    drv = _driver(tmp_path / "downloads")
    try:
        drv.get(html.as_uri())
        _ready(drv)
        assert drv.title != "pwned"
        ref = names[int(g.groups()[0][0])]
        other = names[1 - names.index(ref)]
        assert _pressed(drv) == {(ref, other): "not_reprint"}
        drv.find_element("css selector", '.verdict button[data-v="same_photo"]').click()
        assert _pressed(drv) == {(ref, other): "same_photo"}
        assert not drv.find_elements("css selector", 'a[href^="javascript"]')
    finally:
        drv.quit()


# --------------------------------------------------------------------------- a damaged index


@pytest.fixture()
def copy_of_index(hostile, tmp_path, monkeypatch):
    """A copy of the 'hostile' index (under a new outputs folder) to damage."""
    out = tmp_path / "outputs"
    shutil.copytree(hostile[0] / "index" / "hostile", out / "index" / "copy")
    shutil.copytree(hostile[0] / "cache", out / "cache")
    monkeypatch.setattr(paths, "OUTPUTS_DIR", out)
    return out / "index" / "copy", hostile[1] / "scene_camera" / "camera_0.jpg"


def _search(query, capsys) -> tuple[int, pd.DataFrame | None, str]:
    code = cli.main(["search", "copy", str(query), "--top-k", "3", "-q"])
    got = capsys.readouterr()
    table = pd.read_csv(io.StringIO(got.out)) if code == 0 else None
    return code, table, got.err


@pytest.mark.parametrize("damage", ["truncate vectors", "truncate items", "shuffle vectors"])
def test_a_damaged_index_says_which_file_and_how_to_rebuild(copy_of_index, capsys, damage):
    folder, query = copy_of_index
    header = json.loads((folder / "index.json").read_text())
    vec, items = folder / header["vectors"], folder / header["items"]
    if damage == "truncate vectors":
        vec.write_bytes(vec.read_bytes()[:-700])
    elif damage == "truncate items":
        items.write_bytes(items.read_bytes()[:-60])
    else:
        v = np.load(vec)
        np.save(vec, v[::-1].copy())
    code, _, err = _search(query, capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "damaged" in err and "python -m cbir_utils index" in err


@pytest.mark.parametrize("damage", ["missing npz", "truncated json", "npz of another index"])
def test_a_damaged_saved_pipeline_is_fitted_again(copy_of_index, capsys, damage, hostile):
    folder, query = copy_of_index
    code, before, _ = _search(query, capsys)
    assert code == 0
    npz, head = folder / "pipeline.npz", folder / "pipeline.json"
    if damage == "missing npz":
        npz.unlink()
    elif damage == "truncated json":
        head.write_text(head.read_text()[:40])
    else:  # the same collection fitted with other settings: the arrays do not belong here
        other = np.load(npz)
        np.savez(npz, **{k: (v * 0.5 if v.dtype.kind == "f" else v) for k, v in other.items()})
    with pytest.warns(UserWarning, match="fitted again"):
        code, after, _ = _search(query, capsys)
    assert code == 0 and after.equals(before)


def test_a_truncated_local_feature_cache_file_is_computed_again(copy_of_index, capsys):
    folder, query = copy_of_index
    code, before, _ = _search(query, capsys)
    cached = sorted((folder.parent.parent / "cache" / "local").rglob("*.npz"))
    assert code == 0 and cached
    for f in cached:
        f.write_bytes(f.read_bytes()[:100])
    code, after, _ = _search(query, capsys)
    assert code == 0 and after.equals(before)
    whole = [f for f in cached if f.stat().st_size > 100]
    assert whole and all(np.load(f)["xy"].ndim == 2 for f in whole)  # those used: written again


# --------------------------------------------------------------------------- files people share


def test_verdicts_in_spreadsheet_encodings_and_ragged_rows(tmp_path):
    """A verdicts file saved by a spreadsheet: UTF-8 with a BOM or Windows-1252, with a row
    that has a cell too many; the good rows are read, the ragged one named by its line."""
    head = "query,candidate,verdict,time,context,reviewer\r\n"
    good = "a.jpg,b.jpg,same_photo,2026-01-02T00:00:00Z,p. 3,Ren\u00e9e\r\n"
    ragged = "c.jpg,d.jpg,not_reprint,,Le Matin, 12 mars,XY\r\n"
    for enc, bom in (("utf-8", b"\xef\xbb\xbf"), ("utf-8", b""), ("cp1252", b"")):
        f = tmp_path / f"v-{enc}-{len(bom)}.csv"
        f.write_bytes(bom + (head + good + ragged + good.replace("b.jpg", "e.jpg")).encode(enc))
        got = review.read_verdicts(f)
        assert got.rows["reviewer"].tolist() == ["Ren\u00e9e", "Ren\u00e9e"]
        assert got.rows["candidate"].tolist() == ["b.jpg", "e.jpg"]
        assert got.bad["line"].tolist() == [3] and "7 cells" in got.bad["reason"][0]


def test_two_runs_never_write_one_index_at_once(hostile, tmp_path, monkeypatch):
    """While a process holds the index folder, a `verdicts import` waits, then stops with a
    message naming it; two imports at once both land in the history, nothing lost."""
    import subprocess
    import sys

    from cbir_utils import io as cio

    out, _, meta = hostile
    folder = tmp_path / "index"
    shutil.copytree(out / "index" / "hostile", folder)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from cbir_utils.io import folder_lock\n"
         "with folder_lock(sys.argv[1], 'a test holder'):\n print('held', flush=True); "
         "time.sleep(30)", str(folder)],
        stdout=subprocess.PIPE, text=True, cwd=paths.PROJECT_ROOT,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(cio, "LOCK_WAIT", 0.5)
        f = tmp_path / "v.csv"
        save_csv(f, pd.DataFrame({"query": [meta["path"][0]], "candidate": [meta["path"][1]],
                                  "verdict": ["same_photo"]}))  # fmt: skip
        with pytest.raises(InputError, match="a test holder"):
            review.import_verdicts(f, folder)
    finally:
        holder.kill()
        holder.wait()
    before, files = len(review.history(folder)), []
    for k in range(2):
        files.append(tmp_path / f"v{k}.csv")
        save_csv(files[-1], pd.DataFrame({"query": [meta["path"][0]],
                 "candidate": [meta["path"][2 + k]], "verdict": ["same_photo"]}))  # fmt: skip
    code = "import sys; from cbir_utils.evidence import review; review.import_verdicts(sys.argv[1], sys.argv[2])"
    runs = [subprocess.Popen([sys.executable, "-c", code, str(f), str(folder)],
                             cwd=paths.PROJECT_ROOT) for f in files]  # fmt: skip
    assert [r.wait(60) for r in runs] == [0, 0]
    hist = review.history(folder)
    assert len(hist) == before + 2 and set(meta["path"][2:4]) <= set(hist["candidate"])


def test_outputs_honour_the_umask(tmp_path):
    from cbir_utils import io as cio

    old = os.umask(0o027)
    try:
        cio.save_csv(tmp_path / "a.csv", pd.DataFrame({"x": [1]}))
        cio.atomic_create_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert {oct((tmp_path / n).stat().st_mode & 0o777) for n in ("a.csv", "b.txt")} == {"0o640"}


@settings(max_examples=300, deadline=None, derandomize=True)  # same cases each run
@given(
    st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=12), min_size=1, max_size=6)
)
def test_any_text_round_trips_and_is_never_live(tmp_path_factory, cells):
    """Property: whatever a cell holds, the CSV a person opens runs no formula, and the
    project reads back exactly what it wrote (verdicts too)."""
    f = tmp_path_factory.mktemp("prop") / "t.csv"
    save_csv(f, pd.DataFrame({"text": cells}))
    assert _live_cells(_text(f)) == []
    assert read_csv(f)["text"].tolist() == cells
    names = [c.strip() or "x" for c in cells]
    v = pd.DataFrame({"query": names, "candidate": names, "verdict": "same_photo",
                      "context": cells, "reviewer": cells})  # fmt: skip
    save_csv(f, v)
    got = review.read_verdicts(f).rows
    assert got["context"].tolist() == [c.strip() for c in cells]
