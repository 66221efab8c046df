"""HTML and PNG contact sheets of duplicate groups; the HTML checked in headless Chromium."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from cbir_utils.evidence import contact_sheet as cs
from cbir_utils.evidence import groups
from cbir_utils.paths import PROJECT_ROOT


class Page(HTMLParser):
    """Collects groups, images, links and scripts of a contact sheet."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[dict] = []
        self.imgs: list[dict] = []
        self.links: list[str] = []
        self.figures: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a)
        elif tag == "img":
            self.imgs.append(a)
        elif tag == "a":
            self.links.append(a["href"])
        elif tag == "figure":
            self.figures.append(a.get("class", ""))
        src = a.get("src") or ""
        if (
            tag == "link"
            or (tag == "script" and src)
            or (tag == "img" and not src.startswith("data:"))
        ):
            self.external.append(str(a))


@pytest.fixture()
def planted(tmp_path, tiny_collection):
    """Images in a folder with awkward names, grouped by hand-made vectors: 3 + 2 + 1."""
    src = sorted(tiny_collection.rglob("*.jpg"))
    folder = tmp_path / "scans" / "dossier été"
    folder.mkdir(parents=True)
    names = ["a <1>.jpg", "a&2.jpg", "a'3\".jpg", "b #1.jpg", "b 2.jpg", "lone.jpg"]
    paths = []
    for s, n in zip(src[:3] + src[3:5] + src[10:11], names):
        paths.append(folder / n)
        shutil.copy(s, paths[-1])
    r = np.deg2rad([0, 2, 4, 90, 92, 200])
    x = np.c_[np.cos(r), np.sin(r)].astype(np.float32)
    g = groups.duplicate_groups(x, 0.9)
    scenes = ["a", "a", "b", "b", "b", ""]  # the third image is "another scene" in group 1
    return g, paths, names, scenes


def test_html_contact_sheet(planted, tmp_path):
    g, paths, names, scenes = planted
    out = tmp_path / "out" / "sheet.html"
    cs.contact_sheet_html(
        g, paths, out, names=names, scenes=scenes, notes=["model x"], progress=False
    )
    text = out.read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    assert [s["id"] for s in page.sections] == ["group-1", "group-2"]  # the singleton is left out
    assert len(page.imgs) == 5 and not page.external  # self-contained
    for img in page.imgs:  # each thumbnail is a decodable JPEG of at most 160 px
        assert img["src"].startswith("data:image/jpeg;base64,")
        im = Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1])))
        assert im.format == "JPEG" and max(im.size) <= 160
    assert sorted(i["alt"] for i in page.imgs) == sorted(names[:5])  # names escaped, intact
    for href in page.links:  # relative links lead to the full images
        assert not href.startswith(("/", "file:"))
        assert (out.parent / unquote(href)).resolve() in {p.resolve() for p in paths}
    assert page.figures.count("odd") == 1 and page.figures.count("same") == 4
    assert "model x" in text and "<script>" in text and "a <1>" not in text


def test_html_options_and_errors(planted, tmp_path):
    g, paths, _, _ = planted
    out = cs.contact_sheet_html(
        g, paths, tmp_path / "s.html", max_groups=1, relative_links=False, progress=False
    )
    page = Page()
    page.feed(out.read_text(encoding="utf-8"))
    assert len(page.sections) == 1 and all(h.startswith("file:///") for h in page.links)
    assert set(page.figures) == {"unknown"}  # no scene labels: grey frames
    with pytest.raises(ValueError, match="paths"):
        cs.contact_sheet_html(g, paths[:2], tmp_path / "x.html", progress=False)
    none = groups.duplicate_groups(np.eye(3, dtype=np.float32), 0.5)
    out = cs.contact_sheet_html(none, paths[:3], tmp_path / "empty.html", progress=False)
    assert "No group of duplicates" in out.read_text(encoding="utf-8")


def test_unreadable_image_gets_a_placeholder(planted, tmp_path):
    g, paths, _, _ = planted
    Path(paths[0]).write_bytes(b"not an image")
    assert cs.thumbnail_data_uri(paths[0]) is None
    out = cs.contact_sheet_html(g, paths, tmp_path / "s.html", progress=False)
    assert "data:image/svg+xml;base64," in out.read_text(encoding="utf-8")


def test_png_contact_sheet(planted, tmp_path):
    import matplotlib.pyplot as plt

    g, paths, names, scenes = planted
    fig = cs.contact_sheet_figure(
        g, paths, names, scenes, path=tmp_path / "sheet.png", max_per_group=2
    )
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 4  # 2 groups, at most 2 images each
    assert (tmp_path / "sheet.png").stat().st_size > 10_000
    assert any("+1" == t.get_text() for ax in fig.axes for t in ax.texts)  # 3rd image noted
    plt.close(fig)


@pytest.mark.skipif(
    not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")),
    reason="Chromium is not installed (Debian: apt-get install chromium)",
)
def test_opens_in_headless_chromium(planted, tmp_path):
    g, paths, names, scenes = planted
    html = cs.contact_sheet_html(
        g, paths, tmp_path / "sheet.html", names=names, scenes=scenes, progress=False
    )
    shot = tmp_path / "shot.png"
    run = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "scripts" / "screenshot_contact_sheet.py"), str(html),
         "--out", str(shot), "--width", "900", "--height", "700"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok   no console messages" in run.stdout and "FAIL" not in run.stdout
    assert "2 groups, 5 images" in run.stdout
    arr = np.asarray(Image.open(shot).convert("L"))
    assert arr.shape == (700, 900) and arr.std() > 10
