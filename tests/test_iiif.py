"""IIIF input against a local HTTP server on 127.0.0.1: a v2 and a v3 manifest, a collection
of both and a URL list, with a 404, a response slower than the timeout, a truncated image and
a non-image body among the images. Good images are indexed, each failure is reported with
its reason, a rerun fetches nothing again, and nothing hangs."""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest
from PIL import Image

from cbir_utils import paths
from cbir_utils.sources import data, iiif

pytestmark = pytest.mark.filterwarnings("ignore::cbir_utils.sources.data.SkippedFilesWarning")


@pytest.fixture(scope="module")
def server(tiny_collection):
    """The server: images are the tiny collection's printings, served by the Image API."""
    files = sorted(tiny_collection.rglob("*.jpg"))

    def jpeg(k: int) -> bytes:
        buf = io.BytesIO()
        Image.open(files[k]).convert("RGB").save(buf, format="JPEG", quality=90)
        return buf.getvalue()

    images = {"good1": jpeg(0), "good2": jpeg(3), "good3": jpeg(6)}
    images["trunc"] = jpeg(9)[: len(jpeg(9)) // 2]  # a JPEG cut in the middle
    state = {"hits": [], "base": ""}

    def v2_manifest(base):
        def canvas(n, ident, label):
            return {
                "@id": f"{base}/v2/canvas/{n}", "@type": "sc:Canvas", "label": label,
                "width": 400, "height": 300,
                "images": [{"@type": "oa:Annotation", "motivation": "sc:painting",
                            "on": f"{base}/v2/canvas/{n}",
                            "resource": {"@id": f"{base}/img/{ident}/full/full/0/default.jpg",
                                         "@type": "dctypes:Image",
                                         "service": {"@id": f"{base}/img/{ident}",
                                                     "@context": "http://iiif.io/api/image/2/context.json",
                                                     "profile": "http://iiif.io/api/image/2/level1.json"}}}],
            }  # fmt: skip

        return {
            "@context": "http://iiif.io/api/presentation/2/context.json",
            "@id": f"{base}/v2/manifest.json", "@type": "sc:Manifest",
            "label": "Le Miroir, n° 120",
            "metadata": [{"label": "Title", "value": "Le Miroir"},
                         {"label": "Date", "value": "12 mars 1916 (1916-03-12)"}],
            "related": f"{base}/viewer/miroir-120",
            "sequences": [{"@type": "sc:Sequence", "canvases": [
                canvas(1, "good1", "p. 1"), canvas(2, "missing", "p. 2"), canvas(3, "slow", "p. 3")]}],
        }  # fmt: skip

    def v3_manifest(base):
        def canvas(n, ident, label, target_suffix=""):
            cid = f"{base}/v3/canvas/{n}"
            return {
                "id": cid, "type": "Canvas", "label": {"none": [label]}, "width": 400, "height": 300,
                "items": [{"id": f"{cid}/page", "type": "AnnotationPage", "items": [{
                    "id": f"{cid}/ann", "type": "Annotation", "motivation": "painting",
                    "target": cid + target_suffix,
                    "body": {"id": f"{base}/img/{ident}/full/max/0/default.jpg", "type": "Image",
                             "format": "image/jpeg",
                             "service": [{"id": f"{base}/img/{ident}", "type": "ImageService3",
                                          "profile": "level1"}]}}]}],
            }  # fmt: skip

        return {
            "@context": "http://iiif.io/api/presentation/3/context.json",
            "id": f"{base}/v3/manifest.json", "type": "Manifest",
            "label": {"fr": ["Excelsior, 3 avril 1916"]},
            "navDate": "1916-04-03T00:00:00Z",
            "homepage": [{"id": f"{base}/viewer/excelsior", "type": "Text"}],
            "items": [canvas(1, "good2", "1"), canvas(2, "trunc", "2"), canvas(3, "html", "3"),
                      canvas(4, "good3", "4", "#xywh=10,20,200,150")],
        }  # fmt: skip

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _send(self, code, body, ctype):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                pass

        def do_GET(self):  # noqa: N802 - the http.server API
            base = state["base"]
            state["hits"].append(self.path)
            docs = {
                "/v2/manifest.json": v2_manifest(base),
                "/v3/manifest.json": v3_manifest(base),
                "/collection.json": {
                    "@context": "http://iiif.io/api/presentation/3/context.json",
                    "id": f"{base}/collection.json",
                    "type": "Collection",
                    "label": {"en": ["Press"]},
                    "items": [
                        {"id": f"{base}/v2/manifest.json", "type": "Manifest"},
                        {"id": f"{base}/v3/manifest.json", "type": "Manifest"},
                        {"id": f"{base}/gone/manifest.json", "type": "Manifest"},
                    ],
                },  # fmt: skip
            }
            if self.path in docs:
                return self._send(200, json.dumps(docs[self.path]).encode(), "application/json")
            parts = self.path.split("/")
            if len(parts) > 2 and parts[1] == "img":
                ident = parts[2]
                if ident == "slow":
                    time.sleep(3)  # past the client's timeout
                    return self._send(200, images["good1"], "image/jpeg")
                if ident == "html":
                    return self._send(200, b"<html><body>Access denied</body></html>", "text/html")
                if ident in images:
                    return self._send(200, images[ident], "image/jpeg")
            return self._send(404, b"not found", "text/plain")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state["base"] = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()


FAST = iiif.FetchConfig(size=256, workers=3, timeout=1.0, retries=1, backoff=0.05)


@pytest.fixture()
def outputs(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "OUTPUTS_DIR", tmp_path / "outputs")
    return tmp_path / "outputs"


def test_collection_of_v2_and_v3_manifests(server, outputs):
    base = server["base"]
    t0 = time.time()
    col = data.load_collection(f"{base}/collection.json", iiif_config=FAST, progress=False)
    elapsed = time.time() - t0
    assert elapsed < 20, f"took {elapsed:.1f} s"  # the slow image times out, nothing hangs
    items = col.items.set_index("relpath")
    assert len(col) == 3  # good1 (v2), good2 and the region of good3 (v3)
    by_kind = {k: why for k, why in zip(col.skipped["kind"], col.skipped["reason"])}
    assert "HTTP 404" in by_kind["http_error"] and "/img/missing/" in by_kind["http_error"]
    assert "within 1 s" in by_kind["timeout"]
    assert "truncated" in col.skipped["kind"].tolist()
    assert "text/html" in by_kind["not_image"]
    assert (
        "gone/manifest.json"
        in col.skipped.loc[col.skipped["kind"] == "manifest", "relpath"].iloc[0]
    )
    assert len(col.skipped) == 5
    # provenance from the manifests
    v2 = items[items["manifest"].str.endswith("/v2/manifest.json")].iloc[0]
    assert (v2["periodical"], v2["date"], v2["page"]) == ("Le Miroir", "1916-03-12", "p. 1")
    assert v2["source_url"] == f"{base}/viewer/miroir-120"
    assert v2["iiif_image"] == f"{base}/img/good1/full/!256,256/0/default.jpg"
    v3 = items[items["manifest"].str.endswith("/v3/manifest.json")]
    assert set(v3["periodical"]) == {"Excelsior, 3 avril 1916"} and set(v3["date"]) == {
        "1916-04-03"
    }
    crop = v3[v3["region"] != ""].iloc[0]
    assert crop["region"] == "10,20,200,150"
    assert crop["iiif_image"] == f"{base}/img/good3/10,20,200,150/!256,256/0/default.jpg"
    assert Image.open(crop["path"]).size[0] <= 256
    # outputs stay in the outputs cache
    assert all(str(p).startswith(str(outputs)) for p in col.items["path"])
    # a rerun is resumable: the good images are not fetched again
    server["hits"].clear()
    again = data.load_collection(f"{base}/collection.json", iiif_config=FAST, progress=False)
    assert again.items["relpath"].tolist() == col.items["relpath"].tolist()
    fetched = [h for h in server["hits"] if h.startswith("/img/")]
    assert not any(("good1" in h or "good2" in h or "good3" in h) for h in fetched), fetched
    assert not any(h.endswith("manifest.json") and "gone" not in h for h in server["hits"])


def test_url_list_and_manifest_file(server, outputs, tmp_path):
    base = server["base"]
    urls = tmp_path / "manifests.txt"
    urls.write_text(
        f"# two issues\n{base}/v2/manifest.json\n\n{base}/v3/manifest.json  # Excelsior\n"
    )
    col = data.load_collection(urls, iiif_config=FAST, progress=False)
    assert len(col) == 3 and set(col.items["periodical"]) == {
        "Le Miroir",
        "Excelsior, 3 avril 1916",
    }
    # a manifest saved as a file: same images, no network needed for the document
    f = tmp_path / "v2.json"
    import requests

    f.write_text(requests.get(f"{base}/v2/manifest.json", timeout=5).text)
    col2 = data.load_collection(f, iiif_config=FAST, progress=False)
    assert len(col2) == 1 and col2.items["page"].tolist() == ["p. 1"]


def test_index_command_with_a_manifest_url(server, outputs, capsys):
    from cbir_utils import cli
    from cbir_utils.engine.index import Index

    base = server["base"]
    assert cli.main(["index", f"{base}/v3/manifest.json", "--name", "iiif", "-q",
                     "--image-size", "128"]) == 0  # fmt: skip
    index = Index.load(outputs / "index" / "iiif")
    assert len(index) == 2 and set(index.items["iiif_image"].str.startswith(f"{base}/img/"))
    skipped = pd.read_csv(
        outputs / "index" / "iiif" / "skipped.csv", dtype=str, keep_default_na=False
    )
    assert set(skipped["kind"]) == {"truncated", "not_image"}
    # a new image searched with a large --top-k gets every indexed image once
    query = outputs.parent / "query.png"
    Image.open(index.items["path"][0]).rotate(3).save(query)
    capsys.readouterr()
    assert cli.main(["search", "iiif", str(query), "--top-k", "50", "-q"]) == 0
    rows = pd.read_csv(io.StringIO(capsys.readouterr().out), keep_default_na=False)
    assert sorted(rows["candidate"]) == sorted(index.relpaths)


def test_notebooks_data_dir_takes_a_manifest_url(server, outputs):
    col = data.open_collection(f"{server['base']}/v3/manifest.json", progress=False)
    assert len(col) == 2 and set(col.items["periodical"]) == {"Excelsior, 3 avril 1916"}
    assert set(col.skipped["kind"]) == {"truncated", "not_image"}


def test_bad_sources():
    with pytest.raises(ValueError, match="size"):
        iiif.FetchConfig(size=8)
    assert iiif.is_iiif_source("https://gallica.bnf.fr/iiif/ark:/12148/bpt6k/manifest.json")
    assert not iiif.is_iiif_source("data/demo")
