"""Read the files packed in a Qt resource bundle (``.rcc``), as some Debian packages ship them.

The hard collection takes photographs from GCompris's data package, whose activities keep
their images in such bundles. The format (Qt's ``qresource.cpp``): a ``qres`` header with
the offsets of a tree of nodes, of their names and of their data; a file's data may be
zlib-compressed (``qCompress``: its size, then the stream).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from cbir_utils.errors import InputError

_DIR, _ZLIB, _ZSTD = 0x02, 0x01, 0x04


def read_bundle(path: str | Path) -> dict[str, bytes]:
    """Return ``{path inside the bundle: bytes}`` for every file of a ``.rcc`` bundle.

    Raises:
        InputError: not a Qt resource bundle, or a file compressed with zstd (not read here).
    """
    b = Path(path).read_bytes()
    if b[:4] != b"qres" or len(b) < 20:
        raise InputError(f"{path} is not a Qt resource bundle (no 'qres' header)")
    version, tree, data, names = struct.unpack(">IIII", b[4:20])
    node = 14 if version == 1 else 22  # version 2 on: 8 bytes of modification time per node

    def name(offset: int) -> str:
        (n,) = struct.unpack(">H", b[names + offset : names + offset + 2])
        return b[names + offset + 6 : names + offset + 6 + 2 * n].decode("utf-16-be")

    out: dict[str, bytes] = {}
    todo = [(0, "")]
    while todo:
        i, parent = todo.pop()
        at = tree + i * node
        name_at, flags = struct.unpack(">IH", b[at : at + 6])
        rel = f"{parent}/{name(name_at)}".lstrip("/") if i else ""
        if flags & _DIR:
            count, first = struct.unpack(">II", b[at + 6 : at + 14])
            todo.extend((c, rel) for c in range(first, first + count))
            continue
        (data_at,) = struct.unpack(">I", b[at + 10 : at + 14])
        (size,) = struct.unpack(">I", b[data + data_at : data + data_at + 4])
        raw = b[data + data_at + 4 : data + data_at + 4 + size]
        if flags & _ZSTD:
            raise InputError(f"{path}: {rel} is compressed with zstd, which is not read here")
        out[rel] = zlib.decompress(raw[4:]) if flags & _ZLIB else raw
    return dict(sorted(out.items()))
