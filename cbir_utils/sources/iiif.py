"""IIIF collections as input: manifests (Presentation API 2 and 3), collections, URL lists.

Give ``index`` (or ``DATA_DIR``) a manifest, a collection of manifests (nested ones
followed), or a text file of their URLs. Each canvas image is fetched through the Image API
(``!1024,1024``) into ``outputs/cache/iiif/<source>/``, politely in parallel with retries;
a rerun fetches only what is missing. Every failure is a row of ``skipped.csv``. The
manifest's label, metadata and ``navDate`` become the provenance columns (``periodical``,
``date``, ``page``, ``source_url``, ``iiif_image``, ``region``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
from tqdm.auto import tqdm

from cbir_utils import __version__
from cbir_utils import paths as project
from cbir_utils.errors import CollectionError, InputError, MissingFilesError
from cbir_utils.io import atomic_write_bytes, save_csv
from cbir_utils.sources.provenance import is_http

MANIFEST_FILE = "manifest.csv"
FAILURES_FILE = "fetch_failures.csv"
IMAGE_TYPES = ("image/",)
_PERIODICAL_LABELS = ("periodical", "title", "journal", "newspaper", "publication", "titre")
_DATE_LABELS = ("date", "date of publication", "published", "created", "issued", "date d'édition")
_ISO_RE = re.compile(r"(1[4-9]\d\d|20\d\d)(?:-(\d\d)(?:-(\d\d))?)?")
_XYWH_RE = re.compile(r"#xywh=(?:pixel:)?(\d+),(\d+),(\d+),(\d+)")


@dataclass(frozen=True)
class FetchConfig:
    """How images are fetched: the size asked for, parallel requests, timeouts, retries with
    back-off (``Retry-After`` respected), and limits on bytes, time, documents, nesting and
    canvases; a limit that is hit is a row of ``skipped.csv`` and the rest goes on.
    """

    size: int = 1024
    workers: int = 4
    timeout: float = 20.0
    retries: int = 3
    backoff: float = 0.5
    refresh: bool = False
    max_bytes: int = 50_000_000
    deadline: float = 120.0
    max_documents: int = 5_000
    max_depth: int = 8
    max_canvases: int = 200_000

    def __post_init__(self) -> None:
        if self.size < 32:
            raise InputError(f"size must be at least 32 pixels, got {self.size!r}.")
        if self.workers < 1:
            raise InputError(f"workers must be at least 1, got {self.workers!r}.")
        if self.timeout <= 0 or self.retries < 0 or self.backoff < 0:
            raise InputError("timeout must be > 0, retries and backoff >= 0.")
        if min(self.max_bytes, self.deadline, self.max_documents, self.max_canvases) <= 0:
            raise InputError("max_bytes, deadline, max_documents and max_canvases must be > 0.")
        if self.max_depth < 0:
            raise InputError(f"max_depth must be >= 0, got {self.max_depth!r}.")


@dataclass
class Canvas:
    """One image of a manifest, with what the manifest says about it."""

    manifest: str
    number: int
    image_url: str
    meta: dict[str, str] = field(default_factory=dict)


@dataclass
class FetchResult:
    """What :func:`fetch` made: the manifest CSV of the fetched images, and the failures."""

    folder: Path
    manifest: Path
    failures: pd.DataFrame
    n_canvases: int = 0
    fetched: int = 0
    cached: int = 0


def is_iiif_source(source: object) -> bool:
    """Whether ``source`` names a IIIF input: a URL, a ``.json`` file or a ``.txt`` URL list."""
    s = str(source).strip()
    if s.lower().startswith(("http://", "https://")):
        return True
    p = Path(s).expanduser()
    return p.suffix.lower() in (".json", ".txt") and p.is_file()


# --------------------------------------------------------------------------- HTTP


def session(config: FetchConfig):
    """A ``requests`` session retrying with back-off (urllib3 ``Retry``), pooled per host."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retry = Retry(
        total=config.retries,
        connect=config.retries,
        read=config.retries,
        status=config.retries,
        backoff_factor=config.backoff,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=frozenset({"GET"}),
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    s = requests.Session()
    adapter = HTTPAdapter(
        max_retries=retry, pool_connections=config.workers, pool_maxsize=config.workers
    )
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.headers["User-Agent"] = f"cbir_utils/{__version__} (EYCON press-photo research; IIIF client)"
    return s


def _reason(err: BaseException, config: FetchConfig) -> tuple[str, str]:
    """``(kind, reason)`` of a failed request."""
    import requests

    tries = f" (tried {config.retries + 1} times)" if config.retries else ""
    if isinstance(err, requests.exceptions.Timeout) or "timed out" in str(err).lower():
        return "timeout", f"no answer within {config.timeout:g} s{tries}"
    if isinstance(err, requests.exceptions.ConnectionError):
        text = str(err)
        if "IncompleteRead" in text or "ProtocolError" in text:
            return "truncated", f"the download stopped before the end ({text[:160]})"
        return "connection", f"cannot connect{tries}: {text[:200]}"
    return "connection", f"request failed: {type(err).__name__}: {str(err)[:200]}"


class Refused(Exception):
    """A response or document refused: ``kind`` and ``reason`` go to ``skipped.csv``."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def _get(sess, url: str, config: FetchConfig) -> tuple[str, bytes]:
    """``(content type, body)`` of a GET within :attr:`FetchConfig.max_bytes` and ``deadline``."""
    if not is_http(url):
        raise Refused("not_http", f"{url[:200]!r} is not an http(s) URL; it is not read")
    start = time.monotonic()
    r = sess.get(url, timeout=config.timeout, stream=True)
    try:
        if r.status_code >= 400:
            raise Refused("http_error", f"HTTP {r.status_code} {r.reason} for {url}")
        ctype = r.headers.get("Content-Type", "").split(";")[0].strip().lower()
        too_large = Refused("too_large", f"{url} is larger than {config.max_bytes} bytes "
                            "(FetchConfig.max_bytes); stopped")  # fmt: skip
        if int(r.headers.get("Content-Length") or 0) > config.max_bytes:
            raise too_large
        body, size = [], 0
        while True:  # read1: whatever has come, so the deadline is checked as bytes trickle
            chunk = r.raw.read1(65536, decode_content=True)
            if not chunk:
                break
            size += len(chunk)
            if size > config.max_bytes:
                raise too_large
            if time.monotonic() - start > config.deadline:
                raise Refused("deadline", f"{url} took more than {config.deadline:g} s "
                              "(FetchConfig.deadline); stopped")  # fmt: skip
            body.append(chunk)
        return ctype, b"".join(body)
    finally:
        r.close()


def _get_json(sess, url: str, config: FetchConfig) -> object:
    _, body = _get(sess, url, config)
    try:
        return json.loads(body)
    except ValueError as err:
        raise CollectionError(f"IIIF document {url} is not JSON ({err}).") from None


# --------------------------------------------------------------------------- documents


def _text(v: object) -> str:
    """A label or value as text: v2 strings, lists and ``@value`` objects; v3 language maps."""
    if v is None:
        return ""
    if isinstance(v, str):
        return re.sub(r"<[^>]+>", "", v).strip()
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, list):
        return "; ".join(t for t in (_text(x) for x in v) if t)
    if isinstance(v, dict):
        if "@value" in v:
            return _text(v["@value"])
        for lang in ("none", "en", "fr", *v.keys()):
            if lang in v:
                return _text(v[lang])
    return ""


def _id(doc: dict) -> str:
    return str(doc.get("id") or doc.get("@id") or "")


def _type(doc: dict) -> str:
    return str(doc.get("type") or doc.get("@type") or "").split(":")[-1].lower()


def _norm_date(text: str) -> str:
    """The most precise ISO date, month or year in ``text``; the text itself when none.

    ``"12 mars 1916 (1916-03-12)"`` gives ``1916-03-12``; ``"mars 1916"`` gives ``1916``.
    """
    found = list(_ISO_RE.finditer(text or ""))
    if not found:
        return (text or "").strip()
    best = max(found, key=lambda m: sum(g is not None for g in m.groups()))
    return best.group(0)[:10]


def _manifest_meta(doc: dict) -> dict[str, str]:
    pairs = {}
    for entry in doc.get("metadata") or []:
        if isinstance(entry, dict):
            pairs[_text(entry.get("label")).lower()] = _text(entry.get("value"))
    periodical = next((pairs[k] for k in _PERIODICAL_LABELS if pairs.get(k)), "") or _text(
        doc.get("label")
    )
    date = _text(doc.get("navDate")) or next((pairs[k] for k in _DATE_LABELS if pairs.get(k)), "")
    home = doc.get("homepage") or doc.get("related") or ""
    if isinstance(home, list):
        home = home[0] if home else ""
    if isinstance(home, dict):
        home = _id(home)
    return {
        "periodical": periodical,
        "date": _norm_date(date),
        "caption": _text(doc.get("summary") or doc.get("description")),
        "source_url": str(home or _id(doc)),
        "manifest": _id(doc),
    }


def _service_id(obj: dict) -> str:
    services = obj.get("service") or []
    if isinstance(services, dict):
        services = [services]
    for s in services:
        if isinstance(s, dict) and ("image" in _type(s) or "image" in str(s.get("profile", ""))):
            return _id(s).rstrip("/")
    return ""


def image_request(service: str, size: int, region: str = "") -> str:
    """The Image API URL of a region (``"x,y,w,h"``, or the full image) at most ``size`` px."""
    return f"{service}/{region or 'full'}/!{size},{size}/0/default.jpg"


def _region(target: object) -> str:
    text = target if isinstance(target, str) else _id(target) if isinstance(target, dict) else ""
    m = _XYWH_RE.search(text or "")
    return ",".join(m.groups()) if m else ""


def _dicts(v: object) -> list[dict]:
    """The objects of a IIIF list (one object alone counts as a list; anything else is none)."""
    items = v if isinstance(v, list) else [v]
    return [x for x in items if isinstance(x, dict)]


def canvases(doc: dict, size: int) -> list[Canvas]:
    """The images of a manifest (v2 ``sequences``/``images``, v3 ``items``/annotations).

    Entries of the wrong type (a string where a canvas should be...) are passed over.
    """
    base = _manifest_meta(doc)
    out: list[Canvas] = []
    if "sequences" in doc:  # Presentation API 2
        seq = (_dicts(doc["sequences"]) or [{}])[0]
        items = [(c, _dicts(c.get("images") or [])) for c in _dicts(seq.get("canvases") or [])]
        bodies = [(c, [(a.get("resource") or {}, a.get("on")) for a in anns]) for c, anns in items]
    else:  # Presentation API 3
        bodies = []
        for c in _dicts(doc.get("items") or []):
            pages = _dicts(c.get("items") or [])
            anns = [a for page in pages for a in _dicts(page.get("items") or [])]
            bodies.append((c, [(a.get("body") or {}, a.get("target")) for a in anns]))
    for n, (canvas, parts) in enumerate(bodies, start=1):
        for body, target in parts[:1]:  # the canvas's main image
            body = (_dicts(body) or [{}])[0]
            service = _service_id(body)
            region = _region(target)
            if service:
                url = image_request(service, size, region)
            elif _id(body):
                url = _id(body)
            else:
                continue
            meta = {**base, "page": _text(canvas.get("label")), "iiif_image": url, "region": region}
            out.append(Canvas(base["manifest"], n, url, meta))
    return out


def _members(doc: dict) -> list[str]:
    """The manifests and sub-collections a IIIF collection lists (v2 and v3)."""
    refs: list[str] = []
    for key in ("manifests", "collections", "members", "items"):
        for m in doc.get(key) or []:
            if isinstance(m, dict) and _id(m):
                refs.append(_id(m))
            elif isinstance(m, str):
                refs.append(m)
    return list(dict.fromkeys(refs))


def _is_collection(doc: dict) -> bool:
    return _type(doc) == "collection" or (
        "manifests" in doc and "sequences" not in doc and _type(doc) != "manifest"
    )


# --------------------------------------------------------------------------- fetching


def _slug(text: str, n: int = 40) -> str:
    return (re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "iiif")[:n]


def cache_folder(source: str, root: str | os.PathLike | None = None) -> Path:
    """Where a IIIF source's images and manifest CSV are kept (under ``outputs/cache/iiif``)."""

    base = Path(root) if root is not None else project.OUTPUTS_DIR / "cache" / "iiif"
    s = str(source).strip()
    parsed = urlparse(s)
    label = f"{parsed.hostname or ''}-{parsed.path}" if parsed.scheme else Path(s).stem
    digest = hashlib.sha1(s.encode("utf-8")).hexdigest()[:8]
    return base / f"{_slug(label)}-{digest}"


def _failure(ref: object, kind: str, why: str) -> dict[str, str]:
    """A row of ``skipped.csv`` for what could not be fetched (a long reference shortened)."""
    return {"relpath": str(ref)[:300], "scene": "", "kind": kind, "reason": why}


def _read_source(
    source: str, sess, config: FetchConfig, folder: Path, progress: bool = False
) -> tuple[list[dict], list[dict]]:
    """The manifest documents of a source (collections and URL lists expanded), and failures;
    local files only where the user named them, references followed over ``http(s)`` only.
    """
    docs_dir = folder / "documents"
    failures: list[dict] = []

    def fail(ref: str, kind: str, why: str) -> None:
        failures.append(_failure(ref, kind, why))

    def load(ref: str, local_ok: bool) -> object:
        if not is_http(ref):
            if not local_ok:
                raise Refused("not_http", f"a reference to {ref[:200]!r}, not an http(s) URL, "
                              "in a remote document; it is not read")  # fmt: skip
            p = Path(ref).expanduser()
            if not p.is_file():
                raise MissingFilesError(f"No IIIF manifest file at {p}.")
            if p.stat().st_size > config.max_bytes:
                raise Refused("too_large", f"{p} is larger than {config.max_bytes} bytes")
            return json.loads(p.read_text(encoding="utf-8"))
        cached = docs_dir / (hashlib.sha1(ref.encode()).hexdigest()[:16] + ".json")
        if cached.is_file() and not config.refresh:
            return json.loads(cached.read_text(encoding="utf-8"))
        doc = _get_json(sess, ref, config)
        atomic_write_bytes(cached, json.dumps(doc).encode("utf-8"))
        return doc

    s = str(source).strip()
    if not is_http(s) and Path(s).suffix.lower() == ".txt":
        lines = Path(s).expanduser().read_text(encoding="utf-8").splitlines()
        refs = [ln.split("#")[0].strip() for ln in lines]
        refs = [r for r in refs if r]
        if not refs:
            raise CollectionError(f"{s} lists no manifest URL (one per line).")
    else:
        refs = [s]
    todo = [(r, 0, True) for r in refs]  # (reference, depth, may be a local file)
    manifests: list[dict] = []
    seen: set[str] = set()
    bar = tqdm(desc="Reading IIIF documents", unit="doc", disable=not progress)
    while todo:
        ref, depth, local_ok = todo.pop(0)
        if ref in seen:
            continue
        if len(seen) >= config.max_documents:
            fail(ref, "limit", f"not read: the crawl stopped at {config.max_documents} "
                 f"documents (FetchConfig.max_documents); {len(todo) + 1} reference(s) left")  # fmt: skip
            break
        seen.add(ref)
        bar.update(1)
        try:
            doc = load(ref, local_ok)
            if not isinstance(doc, dict):
                raise Refused("manifest", f"{ref} is not a IIIF document (a JSON "
                              f"{type(doc).__name__}, not an object)")  # fmt: skip
        except Refused as err:  # a document that answers with an error is a bad manifest
            fail(ref, "manifest" if err.kind == "http_error" else err.kind, err.reason)
            continue
        except Exception as err:  # noqa: BLE001 - every failure is reported, the rest goes on
            if isinstance(err, (CollectionError, MissingFilesError)):
                kind, why = "manifest", str(err)
            elif isinstance(err, ValueError):
                kind, why = "manifest", f"{ref} is not a JSON document ({err})"
            else:
                kind, why = _reason(err, config)
            fail(ref, kind, why)
            continue
        if not _is_collection(doc):
            manifests.append(doc)
        elif depth >= config.max_depth:
            fail(ref, "limit", f"its members are not read: collections nested deeper than "
                 f"{config.max_depth} (FetchConfig.max_depth)")  # fmt: skip
        else:
            local = local_ok and not is_http(ref)
            todo[:0] = [(m, depth + 1, local) for m in _members(doc) if m not in seen]
    bar.close()
    return manifests, failures


def _relpath(c: Canvas, labels: dict[str, str]) -> str:
    digest = hashlib.sha1(c.manifest.encode("utf-8")).hexdigest()[:8]
    return f"{_slug(labels.get(c.manifest, ''), 32)}-{digest}/{c.number:04d}.jpg"


def _download(sess, c: Canvas, dest: Path, config: FetchConfig) -> tuple[str, str] | None:
    """Fetch one image into ``dest`` (atomically); ``None`` when it worked, else (kind, reason)."""
    try:
        ctype, body = _get(sess, c.image_url, config)
    except Refused as err:
        return err.kind, err.reason
    except Exception as err:  # noqa: BLE001 - requests/urllib3 errors of every kind
        return _reason(err, config)
    if ctype and not ctype.startswith(IMAGE_TYPES):
        return "not_image", f"the server sent {ctype}, not an image ({c.image_url})"
    if not body:
        return "empty", f"the server sent an empty body ({c.image_url})"
    atomic_write_bytes(dest, body)
    return None


def fetch(
    source: str | os.PathLike,
    config: FetchConfig | None = None,
    cache_root: str | os.PathLike | None = None,
    progress: bool = True,
) -> FetchResult:
    """Fetch a IIIF source's images into its cache folder (those cached are not fetched again)
    and write its ``manifest.csv``; ``failures`` says what could not be fetched and why.
    """
    config = config or FetchConfig()
    src = str(source).strip()
    folder = cache_folder(src, cache_root)
    sess = session(config)
    try:
        manifests, failures = _read_source(src, sess, config, folder, progress)
        if not manifests:
            shown = "; ".join(f"{f['relpath']}: {f['reason']}" for f in failures[:5])
            raise CollectionError(f"No IIIF manifest could be read from {src}: {shown}")
        labels, items = {}, []
        for d in manifests:
            try:  # a malformed manifest is one skipped source
                found = canvases(d, config.size)
                labels[_manifest_meta(d)["manifest"]] = _text(d.get("label"))
            except (AttributeError, TypeError, KeyError, IndexError, ValueError) as err:
                why = f"a malformed manifest ({type(err).__name__}: {str(err)[:120]})"
                failures.append(_failure(_id(d) or src, "manifest", why))
                continue
            if not found:
                failures.append(_failure(_id(d) or src, "manifest", "the manifest lists no image"))
            for c in found:
                if not is_http(c.image_url):
                    why = f"image {c.number} of {c.manifest} is not an http(s) URL; it is not read"
                    failures.append(_failure(c.image_url, "not_http", why))
                elif len(items) >= config.max_canvases:
                    why = f"not fetched: more than {config.max_canvases} images (FetchConfig.max_canvases)"
                    failures.append(_failure(c.image_url, "limit", why))
                else:
                    items.append(c)
        if not items:
            shown = "; ".join(f"{f['relpath']}: {f['reason']}" for f in failures[:5])
            raise CollectionError(f"The IIIF manifest(s) of {src} list no image. {shown}".strip())
        rels = [_relpath(c, labels) for c in items]
        todo = [k for k, r in enumerate(rels) if not (folder / r).is_file()]
        result = FetchResult(folder, folder / MANIFEST_FILE, pd.DataFrame(), len(items))
        result.cached = len(items) - len(todo)
        lock = threading.Lock()
        bad: dict[int, tuple[str, str]] = {}
        bar = tqdm(total=len(todo), desc="Fetching IIIF images", unit="img", disable=not progress)

        def one(k: int) -> None:
            err = _download(sess, items[k], folder / rels[k], config)
            with lock:
                if err is not None:
                    bad[k] = err
                bar.update(1)

        with ThreadPoolExecutor(max_workers=config.workers) as pool:
            list(pool.map(one, todo))
        bar.close()
        result.fetched = len(todo) - len(bad)
    finally:
        sess.close()
    rows = [
        {"path": r, "scene": "", **{k: v for k, v in c.meta.items()}}
        for k, (c, r) in enumerate(zip(items, rels))
        if k not in bad
    ]
    failures += [_failure(rels[k], kind, why) for k, (kind, why) in sorted(bad.items())]
    result.failures = pd.DataFrame(failures, columns=["relpath", "scene", "kind", "reason"])
    cols = ["path", "scene", "periodical", "date", "page", "caption", "source_url", "iiif_image",
            "region", "manifest"]  # fmt: skip
    save_csv(result.manifest, pd.DataFrame(rows, columns=cols))
    save_csv(folder / FAILURES_FILE, result.failures)
    if not rows:
        shown = "; ".join(f"{f['relpath']}: {f['reason']}" for f in failures[:5])
        raise CollectionError(f"No image of {src} could be fetched: {shown}")
    return result
