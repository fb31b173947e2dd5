"""`refsav score` against a generated corpus of malformed submissions (issue 12).

Every case is built from a small table of (family, builder) functions and scored by the
real CLI entry point, each in a forked child of one fresh runner process (this file run
as a script: the imports are paid once, so a case costs tens of milliseconds, and the
children's peak RSS is that of a standalone `refsav score`, whatever pytest has loaded)
with a time limit and a memory ceiling. For each
case: no traceback, no hang, the documented exit code (0 scored, 2 refused with one
`error:` line naming the file, and the field where there is one), the expected issue
kinds in scores.json when it is scored, nothing written outside --out, and a peak RSS
under 1 GiB.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import posixpath
import random
import resource
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
import traceback
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from refsav.cli import main
from refsav.schemas import rle as rle_ops

H, W = 12, 16
VIDEOS = {"vidA": ["00000", "00001", "00002"], "vidB": ["00000", "00001"]}
EXPRESSIONS = {"vidA": {"0": (1, 0), "1": (2, 1)}, "vidB": {"0": (3, 0), "1": (3, 1)}}  # exp -> (anno_id, type)
CASE_TIMEOUT_S = 20
PEAK_RSS_LIMIT = 1 << 30
GIB = 1 << 30


# --------------------------------------------------------------------------- ground truth


def gt_mask(anno_id: int, t: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[1 + t : 6 + t, 2 * anno_id : 2 * anno_id + 5] = 1
    return m


def write_gt(root: Path) -> None:
    root.mkdir(parents=True)
    videos = {}
    masks: dict[str, list] = {}
    for vid, frames in VIDEOS.items():
        exps = {}
        for exp_id, (anno, type_id) in EXPRESSIONS[vid].items():
            exps[exp_id] = {"exp": f"thing {anno}", "obj_id": [anno], "anno_id": [anno], "type_id": type_id}
            masks[str(anno)] = [rle_ops.encode(gt_mask(anno, t)).to_json() for t in range(len(frames))]
        videos[vid] = {"frames": frames, "expressions": exps, "height": H, "width": W}
    (root / "meta_expressions_valid.json").write_text(json.dumps({"videos": videos}))
    (root / "mask_dict.json").write_text(json.dumps(masks))


def good_results() -> dict:
    return {vid: {exp_id: {"prediction_masks": [rle_ops.encode(gt_mask(anno, t)).to_json() for t in range(len(frames))]}
                  for exp_id, (anno, _) in EXPRESSIONS[vid].items()}
            for vid, frames in VIDEOS.items()}


def png_l(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((mask * 255).astype(np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


def good_tree() -> dict[str, bytes]:
    """Relative path -> bytes of a perfect PNG tree submission."""
    return {f"{vid}/{exp_id}/{frame}.png": png_l(gt_mask(anno, t))
            for vid, frames in VIDEOS.items() for exp_id, (anno, _) in EXPRESSIONS[vid].items()
            for t, frame in enumerate(frames)}


FIRST_PNG = "vidA/0/00000.png"


def without(files: dict[str, bytes], *names: str) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if k not in names}


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


# --------------------------------------------------------------------------- raw PNGs and zips


def chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def raw_png(width: int, height: int, colour: int, depth: int, pixels: np.ndarray | None = None, *,
            plte: bytes | None = None, extra: bytes = b"", idat: bytes | None = None) -> bytes:
    """A PNG written byte by byte, so headers can lie and indices can leave the palette."""
    if idat is None:
        assert pixels is not None
        if depth < 8:  # pack sub-byte samples
            per = 8 // depth
            rows = []
            for row in pixels.reshape(height, -1):
                padded = np.concatenate([row, np.zeros((-len(row)) % per, row.dtype)]).reshape(-1, per)
                shifts = np.arange(per - 1, -1, -1) * depth
                rows.append((padded.astype(np.uint16) << shifts).sum(axis=1).astype(np.uint8).tobytes())
        else:
            dtype = ">u2" if depth == 16 else np.uint8
            rows = [r.astype(dtype).tobytes() for r in pixels.reshape(height, -1)]
        idat = zlib.compress(b"".join(b"\0" + r for r in rows))
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    if plte is not None:
        out += chunk(b"PLTE", plte)
    return out + extra + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@dataclass(frozen=True)
class RawEntry:
    """One zip entry as written, every header field settable."""

    name: str
    data: bytes  # as stored (compressed)
    crc: int
    usize: int
    method: int = zipfile.ZIP_DEFLATED
    flag: int = 0
    csize: int | None = None  # None: len(data)
    external_attr: int = (stat.S_IFREG | 0o644) << 16
    local_name: str | None = None
    name_bytes: bytes | None = None  # raw name (non-UTF-8), flagged UTF-8 when set


def entry(name: str, content: bytes, method: int = zipfile.ZIP_DEFLATED) -> RawEntry:
    if method == zipfile.ZIP_DEFLATED:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        data = c.compress(content) + c.flush()
    elif method == zipfile.ZIP_BZIP2:
        import bz2

        data = bz2.compress(content)
    elif method == zipfile.ZIP_LZMA:
        import lzma

        props = lzma._encode_filter_properties({"id": lzma.FILTER_LZMA1})
        data = b"\x09\x04" + struct.pack("<H", len(props)) + props + lzma.compress(
            content, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA1}])
    else:
        data = content
    return RawEntry(name, data, zlib.crc32(content), len(content), method)


def raw_zip(entries: list[RawEntry]) -> bytes:
    out, central = bytearray(), bytearray()
    for e in entries:
        name = e.name_bytes if e.name_bytes is not None else e.name.encode()
        flag = e.flag | (0x800 if e.name_bytes is not None else 0)
        local = e.local_name.encode() if e.local_name is not None else name
        csize = len(e.data) if e.csize is None else e.csize
        offset = len(out)
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, flag, e.method, 0, 0x21, e.crc, csize, e.usize,
                           len(local), 0) + local + e.data
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", (3 << 8) | 20, 20, flag, e.method, 0, 0x21,
                               e.crc, csize, e.usize, len(name), 0, 0, 0, 0, e.external_attr, offset) + name
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(out), 0)
    return bytes(out + central + end)


def tree_entries(files: dict[str, bytes], **change: Callable[[RawEntry], RawEntry]) -> list[RawEntry]:
    """Zip entries of a tree; ``change[name]`` rewrites one entry (names with / as __)."""
    out = []
    for rel, data in files.items():
        e = entry(rel, data)
        fix = change.get(rel.replace("/", "__"))
        out.append(fix(e) if fix else e)
    return out


def zeros_deflate(size: int) -> bytes:
    """Raw deflate data of ``size`` zero bytes, made in milliseconds: a fully flushed
    1 MiB block is self-contained, so it can be repeated."""
    c = zlib.compressobj(1, zlib.DEFLATED, -15)
    block = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    assert size % (1 << 20) == 0
    return block * (size >> 20) + b"\x03\x00"


def zlib_zeros(size: int) -> bytes:
    """A zlib stream of ``size`` zero bytes (a PNG's IDAT or zTXt payload), in milliseconds."""
    adler, block = 1, bytes(1 << 20)
    for _ in range(size >> 20):
        adler = zlib.adler32(block, adler)
    return b"\x78\x01" + zeros_deflate(size) + struct.pack(">I", adler)


def zeros_crc(size: int) -> int:
    crc, block = 0, bytes(1 << 20)
    for _ in range(size >> 20):
        crc = zlib.crc32(block, crc)
    return crc


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    name: str
    family: str
    build: Callable[[Path], Path]  # case folder -> the --pred path
    expect: str  # "refuse", "issue", "scored" (with or without issues), "ok" (no issue, J&F 100), "any"
    needles: tuple[str, ...] = ()  # refuse: in the error line; issue: issue kinds in scores.json
    args: tuple[str, ...] = ()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _zip(name: str, entries: list[RawEntry]) -> Callable[[Path], Path]:
    return lambda d: _write(d / name, raw_zip(entries))


def _json(obj_or_text, name: str = "results.json") -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        data = obj_or_text if isinstance(obj_or_text, bytes) else (
            obj_or_text.encode() if isinstance(obj_or_text, str) else json.dumps(obj_or_text).encode())
        return _write(d / name, data)
    return build


def _tree(files: dict[str, bytes], also: Callable[[Path], None] | None = None) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        root = write_tree(d / "sub", files)
        if also:
            also(root)
        return root
    return build


def not_plain_file_cases() -> list[Case]:
    def fifo(name: str) -> Callable[[Path], Path]:
        def build(d: Path) -> Path:
            d.mkdir(parents=True, exist_ok=True)
            os.mkfifo(d / name)
            return d / name
        return build

    def fifo_inside(d: Path) -> Path:
        root = write_tree(d / "sub", without(good_tree(), "vidA/0/00001.png"))
        os.mkfifo(root / "vidA" / "0" / "00001.png")
        return root

    def socket_inside(d: Path) -> Path:
        root = write_tree(d / "sub", without(good_tree(), "vidB/0/00000.png"))
        s, here = socket.socket(socket.AF_UNIX), os.getcwd()
        try:  # bound by a relative name: a socket's full path may not exceed 107 bytes
            os.chdir(root / "vidB" / "0")
            s.bind("00000.png")
        finally:
            os.chdir(here)
            s.close()
        return root

    def link_to(target: str, inside: str) -> Callable[[Path], Path]:
        def build(d: Path) -> Path:
            root = write_tree(d / "sub", {k: v for k, v in good_tree().items() if k != inside})
            (root / inside).symlink_to(target)
            return root
        return build

    def fifo_link_inside(d: Path) -> Path:
        root = write_tree(d / "sub", {k: v for k, v in good_tree().items() if k != FIRST_PNG})
        os.mkfifo(root / "pipe")
        (root / FIRST_PNG).symlink_to(root / "pipe")
        return root

    cases = [Case(f"fifo-{n}", "not-plain", fifo(n), "refuse", ("FIFO", n))
             for n in ("results.json", "sub.zip", "preds", "p.parquet")]
    for dev in ("/dev/zero", "/dev/null", "/dev/urandom", "/dev/full"):
        if os.path.exists(dev):
            cases.append(Case(f"device-{dev}", "not-plain", lambda d, dev=dev: Path(dev), "refuse",
                              ("character device", dev)))
    for proc in ("/proc/self/environ", "/proc/self/status", "/proc/self/maps", "/proc/meminfo", "/proc/self/mem",
                 "/proc/self", "/sys/kernel/mm/transparent_hugepage/enabled", "/sys/class/net/lo/mtu"):
        if os.path.exists(proc):
            cases.append(Case(f"proc-{proc}", "not-plain", lambda d, p=proc: Path(p), "refuse", ("/proc or /sys", proc)))
    cases += [
        Case("fifo-inside-folder", "not-plain", fifo_inside, "refuse", ("FIFO", "00001.png")),
        Case("socket-inside-folder", "not-plain", socket_inside, "refuse", ("socket", "00000.png")),
        Case("link-to-dev-zero", "not-plain", link_to("/dev/zero", FIRST_PNG), "refuse", ("leaves the submission", "00000.png")),
        Case("link-to-proc", "not-plain", link_to("/proc/self/environ", FIRST_PNG), "refuse", ("leaves the submission",)),
        Case("link-to-fifo-inside", "not-plain", fifo_link_inside, "refuse", ("FIFO", "pipe")),
    ]
    return cases


def symlink_cases() -> list[Case]:
    cases: list[Case] = []

    def big_outside(d: Path) -> Path:
        big = d / "outside" / "big.bin"
        big.parent.mkdir(parents=True)
        with open(big, "wb") as fh:
            fh.truncate(2 * GIB)  # sparse: costs no disk, but 2 GiB to anything that reads it
        return big

    def folder_link(inside: str, make_target: Callable[[Path], Path], relative: bool) -> Callable[[Path], Path]:
        def build(d: Path) -> Path:
            files = good_tree() if inside != "results.json" else {}
            root = write_tree(d / "sub", {k: v for k, v in files.items() if k != inside and not k.startswith(inside + "/")})
            target = make_target(d)
            link = root / inside
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(target, link.parent) if relative else target)
            return root
        return build

    def outside_json(d: Path) -> Path:
        return _write(d / "outside" / "real.json", json.dumps(good_results()).encode())

    def outside_dir(d: Path) -> Path:
        return write_tree(d / "outside" / "vidA", {f"0/{f}.png": png_l(gt_mask(1, t)) for t, f in enumerate(VIDEOS["vidA"])})

    for relative in (False, True):
        how = "rel" if relative else "abs"
        for inside in (FIRST_PNG, "vidB/1/00001.png", "Annotations-none.png"):
            cases.append(Case(f"link-out-big-{how}-{inside}", "symlink", folder_link(inside, big_outside, relative),
                              "refuse", ("leaves the submission", Path(inside).name)))
        cases.append(Case(f"link-out-json-{how}", "symlink", folder_link("results.json", outside_json, relative),
                          "refuse", ("leaves the submission", "results.json")))
        cases.append(Case(f"link-out-dir-{how}", "symlink", folder_link("vidA", outside_dir, relative),
                          "refuse", ("leaves the submission", "vidA")))
        cases.append(Case(f"link-out-etc-{how}", "symlink",
                          folder_link("vidA/1/00002.png", lambda d: Path("/etc/hostname"), relative),
                          "refuse", ("leaves the submission",)))

    def chain_out(d: Path) -> Path:  # inside -> inside -> outside
        root = write_tree(d / "sub", {k: v for k, v in good_tree().items() if k != FIRST_PNG})
        target = big_outside(d)
        (root / "hop").symlink_to(target)
        (root / FIRST_PNG).symlink_to("../../hop")
        return root

    def inside_file(d: Path) -> Path:
        files = good_tree()
        root = write_tree(d / "sub", {k: v for k, v in files.items() if k != "vidB/1/00000.png"})
        (root / "vidB/1/00000.png").symlink_to("../0/00000.png")  # same GT object: a valid prediction
        return root

    def inside_dir(d: Path) -> Path:
        root = write_tree(d / "sub", good_tree())
        (root / "alias").symlink_to("vidA")
        return root

    def broken(d: Path) -> Path:
        root = write_tree(d / "sub", good_tree())
        (root / "vidA" / "0" / "extra.png").symlink_to("missing.png")
        return root

    def loop(d: Path) -> Path:
        root = write_tree(d / "sub", good_tree())
        (root / "vidA" / "loop").symlink_to("loop")
        return root

    cases += [
        Case("link-chain-out", "symlink", chain_out, "refuse", ("leaves the submission",)),
        Case("link-inside-file", "symlink", inside_file, "ok"),
        Case("link-inside-dir", "symlink", inside_dir, "issue", ("linked_folder",)),
        Case("link-broken-inside", "symlink", broken, "issue", ("broken_link",)),
        Case("link-loop", "symlink", loop, "any"),
    ]
    lnk = (stat.S_IFLNK | 0o777) << 16
    tree = good_tree()
    for target in ("/etc/passwd", "../../etc/passwd", "../../../etc/passwd", "../x.png", "a/../../x", "/dev/zero",
                   "C:/x", "..", "../" * 50, "../1/00000.png"):
        for inside in (FIRST_PNG, "results.json"):
            files = tree if inside != "results.json" else {}
            entries = [e for e in tree_entries(files) if e.name != inside]
            entries.append(replace(entry(inside, target.encode(), zipfile.ZIP_STORED), external_attr=lnk))
            joined = posixpath.normpath(posixpath.join(posixpath.dirname(inside), target))
            if target.startswith("/") or target[1:2] == ":" or joined == ".." or joined.startswith("../"):
                expect, needles = "refuse", ("leaves the zip", "sub.zip")
            elif joined in files:  # a link to another frame of the zip: read as that frame
                expect, needles = "scored", ()
            else:  # stays inside the zip but names no file of it
                expect, needles = ("issue", ("broken_link",)) if files else ("refuse", ("no predictions",))
            cases.append(Case(f"zip-link-{inside}-{target[:12]}", "symlink", _zip("sub.zip", entries), expect, needles))
    entries = [e for e in tree_entries(tree) if e.name != "vidB/1/00000.png"]
    entries.append(replace(entry("vidB/1/00000.png", b"../0/00000.png", zipfile.ZIP_STORED), external_attr=lnk))
    cases.append(Case("zip-link-inside", "symlink", _zip("sub.zip", entries), "ok"))
    entries = tree_entries(tree) + [replace(entry("vidA/0/x.png", b"nothere.png", zipfile.ZIP_STORED), external_attr=lnk)]
    cases.append(Case("zip-link-broken", "symlink", _zip("sub.zip", entries), "issue", ("broken_link",)))
    entries = tree_entries(tree) + [replace(entry("vidA/0/f.png", b"", zipfile.ZIP_STORED),
                                            external_attr=(stat.S_IFIFO | 0o644) << 16)]
    cases.append(Case("zip-fifo-entry", "symlink", _zip("sub.zip", entries), "issue", ("unsafe_entry",)))
    return cases


def parquet_cases() -> list[Case]:
    """VideoPrediction Parquet files: a zip entry that cannot be read loses its rows only."""
    from refsav.schemas.io import write_parquet
    from refsav.schemas.predictions import VideoPrediction

    def parquet_bytes(vids: list[str]) -> bytes:
        import tempfile

        rows = [VideoPrediction(vid, exp_id, VIDEOS[vid], [rle_ops.encode(gt_mask(anno, t)) for t in range(len(VIDEOS[vid]))])
                for vid in vids for exp_id, (anno, _) in EXPRESSIONS[vid].items()]
        with tempfile.TemporaryDirectory() as tmp:
            write_parquet(Path(tmp) / "p.parquet", rows, VideoPrediction)
            return (Path(tmp) / "p.parquet").read_bytes()

    a, b = parquet_bytes(["vidA"]), parquet_bytes(["vidB"])
    cases = [Case("parquet-zip-good", "parquet", _zip("p.zip", [entry("a.parquet", a), entry("b.parquet", b)]), "ok")]
    for fault in ("encrypted", "bad-crc", "method-99", "declares-1gib"):
        entries = [entry("a.parquet", a), ENTRY_FAULTS[fault](entry("b.parquet", b))]
        cases.append(Case(f"parquet-zip-{fault}", "parquet", _zip("p.zip", entries), "issue",
                          ("corrupt_file", "missing_video")))
        cases.append(Case(f"parquet-zip-only-{fault}", "parquet", _zip("p.zip", [ENTRY_FAULTS[fault](entry("b.parquet", b))]),
                          "refuse", ("p.zip", "Parquet")))
    cases.append(Case("parquet-garbage", "parquet", _zip("p.zip", [entry("a.parquet", a), entry("b.parquet", b"PAR1" + bytes(99))]),
                      "refuse", ("p.zip:b.parquet",)))
    cases.append(Case("parquet-file-truncated", "parquet", lambda d: _write(d / "p.parquet", a[: len(a) // 2]), "refuse",
                      ("p.parquet",)))
    return cases


def ambiguous_cases() -> list[Case]:
    results = json.dumps(good_results()).encode()
    tree = good_tree()
    layouts = {
        "two-results": {"a/results.json": results, "b/results.json": results},
        "results-beside-tree": {"results.json": results, **tree},
        "results-beside-annotations": {"results.json": results, **{f"Annotations/{k}": v for k, v in tree.items()}},
        "results-beside-parquet": {"results.json": results, "p.parquet": b"PAR1"},
        "parquet-beside-tree": {"p.parquet": b"PAR1", **tree},
        "tree-twice": {**tree, **{f"Annotations/{k}": v for k, v in tree.items()}},
        "frame-case-twice": {**tree, "vidA/0/00000.PNG": tree[FIRST_PNG]},
    }
    cases = []
    for name, files in layouts.items():
        cases.append(Case(f"ambiguous-folder-{name}", "ambiguous", _tree(files), "refuse", ("ambiguous", "sub")))
        cases.append(Case(f"ambiguous-zip-{name}", "ambiguous", _zip("sub.zip", tree_entries(files)), "refuse",
                          ("ambiguous", "sub.zip")))
    cases.append(Case("ambiguous-zip-same-name", "ambiguous",
                      _zip("sub.zip", [entry("results.json", results), entry("results.json", b"{}")]),
                      "refuse", ("ambiguous", "results.json")))
    cases.append(Case("ambiguous-zip-same-png", "ambiguous",
                      _zip("sub.zip", tree_entries(tree) + [entry(FIRST_PNG, tree["vidA/0/00001.png"])]),
                      "refuse", ("ambiguous", FIRST_PNG)))
    cases.append(Case("ambiguous-zip-dot-slash", "ambiguous",
                      _zip("sub.zip", tree_entries(tree) + [entry("./" + FIRST_PNG, tree[FIRST_PNG])]),
                      "refuse", ("ambiguous",)))
    return cases


# How one entry of a zip is broken, and what the reader must say about it.
def _flip(e: RawEntry, at: float = 0.5, n: int = 4) -> RawEntry:
    data = bytearray(e.data)
    i = int(len(data) * at)
    data[i : i + n] = bytes(b ^ 0xA5 for b in data[i : i + n])
    return replace(e, data=bytes(data))


ENTRY_FAULTS: dict[str, Callable[[RawEntry], RawEntry]] = {
    "encrypted": lambda e: replace(e, flag=e.flag | 0x1),
    "corrupt-deflate-start": lambda e: replace(e, data=b"\xff\xff\xff" + e.data[3:]),
    "corrupt-deflate-middle": lambda e: _flip(e, 0.5),
    "corrupt-deflate-end": lambda e: _flip(e, 0.9, 2),
    "truncated-data": lambda e: replace(e, data=e.data[: len(e.data) // 2], csize=len(e.data) // 2),
    "bad-crc": lambda e: replace(e, crc=e.crc ^ 0xDEADBEEF),
    "method-99": lambda e: replace(e, method=99),
    "method-implode": lambda e: replace(e, method=6),
    "stored-but-deflated": lambda e: replace(e, method=zipfile.ZIP_STORED),
    "bzip2-garbage": lambda e: replace(e, method=zipfile.ZIP_BZIP2),
    "lzma-garbage": lambda e: replace(e, method=zipfile.ZIP_LZMA),
    "header-name-differs": lambda e: replace(e, local_name=e.name[:-5] + "X.png" if e.name.endswith(".png") else "other.json"),
    "under-declared-size": lambda e: replace(e, usize=max(1, e.usize // 3)),
    "over-declared-size": lambda e: replace(e, usize=e.usize * 3 + 10),
    "declares-1gib": lambda e: replace(e, usize=GIB),
    "declares-4gib": lambda e: replace(e, usize=0xFFFFFFFF),
    "zero-size-declared": lambda e: replace(e, usize=0),
}


def zip_entry_cases() -> list[Case]:
    tree = good_tree()
    cases = []
    for fault, fix in ENTRY_FAULTS.items():
        for frame in (FIRST_PNG, "vidB/1/00001.png"):
            entries = tree_entries(tree, **{frame.replace("/", "__"): fix})
            # The other entries are still read: the expression scores, with one corrupt frame.
            cases.append(Case(f"zip-entry-{fault}-{frame}", "zip-entry", _zip("sub.zip", entries), "issue",
                              ("corrupt_file",)))
        entries = [fix(entry("results.json", json.dumps(good_results()).encode()))]
        cases.append(Case(f"zip-results-{fault}", "zip-entry", _zip("sub.zip", entries), "refuse",
                          ("sub.zip:results.json",)))

    def bomb(inside: str) -> Callable[[Path], Path]:
        def build(d: Path) -> Path:
            e = RawEntry(inside, zeros_deflate(GIB), zeros_crc(GIB), GIB)
            others = [x for x in tree_entries(tree if inside != "results.json" else {}) if x.name != inside]
            return _write(d / "bomb.zip", raw_zip(others + [e]))
        return build

    cases += [
        Case("zip-1gib-png-entry", "zip-entry", bomb(FIRST_PNG), "issue", ("corrupt_file",)),
        Case("zip-1gib-results-entry", "zip-entry", bomb("results.json"), "refuse", ("bomb.zip:results.json", "entry_mb")),
        Case("zip-1gib-under-declared", "zip-entry", lambda d: _write(d / "u.zip", raw_zip(
            [x for x in tree_entries(tree) if x.name != FIRST_PNG]
            + [RawEntry(FIRST_PNG, zeros_deflate(64 << 20), 0, 1000)])), "issue", ("corrupt_file",)),
        Case("zip-non-utf8-name", "names", _zip("sub.zip", tree_entries(tree) + [
            replace(entry("x", b"1"), name_bytes=b"vidA/0/\xff\xfe.png")]), "refuse", ("sub.zip", "name")),
        Case("zip-not-a-zip", "zip-entry", lambda d: _write(d / "x.zip", b"PK\x03\x04" + bytes(100)), "refuse", ("x.zip",)),
        Case("zip-empty-file", "zip-entry", lambda d: _write(d / "x.zip", b""), "refuse", ("x.zip",)),
        Case("zip-entry-limit-png", "caps", lambda d: _write(d / "big.zip", raw_zip(
            [x for x in tree_entries(tree) if x.name != FIRST_PNG]
            + [RawEntry(FIRST_PNG, zeros_deflate(2 << 20), zeros_crc(2 << 20), 2 << 20)])), "issue", ("corrupt_file",),
            ("--limit", "entry_mb=1")),
    ]
    return cases



def image_cases() -> list[Case]:
    cases = []
    dims = [(100000, 100000), (1, 2**31 - 1), (2**31 - 1, 1), (2**32 - 1, 2**32 - 1), (65535, 65535), (40000, 40000)]
    for w, h in dims:
        for colour, depth in ((0, 8), (6, 16), (3, 8)):
            png = raw_png(w, h, colour, depth, idat=zlib.compress(bytes(1000)), plte=b"\0\0\0" if colour == 3 else None)
            assert len(png) < 2048
            files = {**good_tree(), FIRST_PNG: png}
            cases.append(Case(f"huge-{w}x{h}-c{colour}", "huge-image", _tree(files), "issue", ("too_large",)))
            cases.append(Case(f"huge-zip-{w}x{h}-c{colour}", "huge-image", _zip("s.zip", tree_entries(files)), "issue",
                              ("too_large",)))
    for w, h in ((W + 1, H), (W, H * 1000), (5000, 5000)):
        files = {**good_tree(), FIRST_PNG: raw_png(w, h, 0, 8, idat=zlib.compress(bytes(100)))}
        cases.append(Case(f"wrong-size-{w}x{h}", "huge-image", _tree(files), "issue", ("wrong_size",)))
    ok = np.zeros((H, W), np.uint8)
    bad_pngs = {
        "zero-width": raw_png(0, H, 0, 8, idat=b""),
        "bad-depth": raw_png(W, H, 0, 3, idat=zlib.compress(bytes(100))),
        "bad-colour": raw_png(W, H, 5, 8, idat=zlib.compress(bytes(100))),
        "truncated-idat": raw_png(W, H, 0, 8, ok)[:-30],
        "idat-bomb": raw_png(W, H, 0, 8, idat=zlib_zeros(64 << 20)),
        "empty-idat": raw_png(W, H, 0, 8, idat=b""),
        "garbage-idat": raw_png(W, H, 0, 8, idat=bytes(range(256)) * 4),
        "bad-ihdr-crc": raw_png(W, H, 0, 8, ok)[:29] + b"\0\0\0\0" + raw_png(W, H, 0, 8, ok)[33:],
        "ztxt-bomb": raw_png(W, H, 0, 8, ok, extra=chunk(b"zTXt", b"k\0\0" + zlib_zeros(256 << 20))),
        "iccp-bomb": raw_png(W, H, 0, 8, ok, extra=chunk(b"iCCP", b"p\0\0" + zlib_zeros(256 << 20))),
        "chunk-claims-2gb": raw_png(W, H, 0, 8, ok)[:33] + struct.pack(">I", 2**31 - 1) + b"tEXt" + b"x" * 50,
        "jpeg-named-png": b"\xff\xd8\xff\xe0" + bytes(200),
        "gif-named-png": b"GIF89a" + struct.pack("<HH", 60000, 60000) + bytes(50),
        "empty-file": b"",
        "signature-only": b"\x89PNG\r\n\x1a\n",
        "no-iend": raw_png(W, H, 0, 8, ok)[:-12],
        "palette-missing": raw_png(W, H, 3, 8, ok),
    }
    # Read from the header or refused by PIL: always a corrupt frame. The rest may decode
    # to something (PIL is lenient with some damage), so only "an answer" is required.
    surely_corrupt = {"zero-width", "bad-depth", "bad-colour", "jpeg-named-png", "gif-named-png", "empty-file",
                      "signature-only", "truncated-idat", "empty-idat", "garbage-idat"}
    for name, png in bad_pngs.items():
        files = {**good_tree(), FIRST_PNG: png}
        expect, kinds = ("issue", ("corrupt_file",)) if name in surely_corrupt else ("any", ())
        cases.append(Case(f"png-{name}", "huge-image", _tree(files), expect, kinds))
        cases.append(Case(f"png-zip-{name}", "huge-image", _zip("s.zip", tree_entries(files)), expect, kinds))
    return cases


def mask_mode_cases() -> list[Case]:
    cases = []
    fg = gt_mask(1, 0).astype(bool)
    for depth in (8, 16):
        top = 255 if depth == 8 else 65535
        rgba = np.zeros((H, W, 4), np.uint32)
        rgba[..., 3] = np.where(fg, top, 0)
        la = np.zeros((H, W, 2), np.uint32)
        la[..., 1] = np.where(fg, top, 0)
        for name, colour, arr in (("rgba", 6, rgba), ("la", 4, la)):
            files = {**good_tree(), FIRST_PNG: raw_png(W, H, colour, depth, arr)}
            cases.append(Case(f"alpha-only-{name}{depth}", "mask-mode", _tree(files), "issue", ("alpha_only",)))
            cases.append(Case(f"alpha-only-zip-{name}{depth}", "mask-mode", _zip("s.zip", tree_entries(files)), "issue",
                              ("alpha_only",)))
    opaque = np.zeros((H, W, 4), np.uint8)
    opaque[..., 0] = np.where(fg, 255, 0)
    opaque[..., 3] = 255
    cases.append(Case("rgba-colour-mask", "mask-mode", _tree({**good_tree(), FIRST_PNG: raw_png(W, H, 6, 8, opaque)}), "ok"))
    for depth, entries_, index in ((8, 2, 5), (8, 1, 200), (8, 16, 255), (4, 2, 15), (2, 1, 3), (1, 1, 1), (8, 256, 255)):
        idx = np.where(fg, index, 0).astype(np.uint8)
        png = raw_png(W, H, 3, depth, idx, plte=bytes(3 * entries_))
        files = {**good_tree(), FIRST_PNG: png}
        expect, kinds = ("ok", ()) if index < entries_ else ("issue", ("palette_index",))
        cases.append(Case(f"palette-d{depth}-n{entries_}-i{index}", "mask-mode", _tree(files), expect, kinds))
        cases.append(Case(f"palette-zip-d{depth}-n{entries_}-i{index}", "mask-mode", _zip("s.zip", tree_entries(files)),
                          expect, kinds))
    return cases


def results_json_cases() -> list[Case]:
    good = good_results()
    text = json.dumps(good)
    one = '{"vidA": {"0": {"prediction_masks": %s}}}'
    cases = [
        Case("deep-array-100k", "json", _json("[" * 100000 + "]" * 100000), "refuse", ("results.json", "nested too deeply")),
        Case("deep-object-100k", "json", _json('{"a":' * 100000 + "1" + "}" * 100000), "refuse", ("results.json", "nested")),
        Case("deep-in-masks", "json", _json(one % ("[" * 100000 + "]" * 100000)), "refuse", ("results.json", "nested")),
        Case("deep-unclosed", "json", _json("[" * 200000), "refuse", ("results.json",)),
        Case("million-digit-int", "json", _json(one % ("[{\"size\": [" + "9" * 1000000 + ", 1], \"counts\": \"0\"}]")),
             "refuse", ("results.json", "number too long")),
        Case("million-digit-float", "json", _json(one % ("[{\"size\": [1." + "5" * 1000000 + ", 1], \"counts\": \"0\"}]")),
             "issue", ("corrupt_mask",)),
        Case("huge-exponent", "json", _json(one % "[{\"size\": [1e999999, 1], \"counts\": \"0\"}]"), "issue", ("corrupt_mask",)),
        Case("non-utf8-bytes", "json", _json(b'{"vidA": {"0": {"prediction_masks": []}}, "\xff\xfe": 1}'), "refuse",
             ("results.json", "UTF-8")),
        Case("utf16-file", "json", _json(text.encode("utf-16")), "refuse", ("results.json",)),
        Case("surrogate-video-id", "json", _json('{"vid\\ud800": {"0": {"prediction_masks": []}}}'), "refuse",
             ("results.json", "field 'video id'")),
        Case("surrogate-exp-id", "json", _json('{"vidA": {"\\udfff": {"prediction_masks": []}}}'), "refuse",
             ("results.json", "field 'expression id'")),
        Case("surrogate-in-counts", "json", _json(one % '[{"size": [12, 16], "counts": "\\ud800"}]'), "issue", ("corrupt_mask",)),
        Case("surrogate-in-text", "json", _json('{"vidA": {"0": {"prediction_masks": [], "exp": "\\ud800"}}}'), "issue",
             ("frame_count",)),
        Case("nul-in-id", "json", _json('{"vid\\u0000A": {"0": {"prediction_masks": []}}}'), "issue", ("extra_video",)),
        Case("top-level-list", "json", _json("[]"), "refuse", ("results.json",)),
        Case("top-level-null", "json", _json("null"), "refuse", ("results.json",)),
        Case("video-is-list", "json", _json('{"vidA": []}'), "refuse", ("results.json", "record vidA")),
        Case("masks-missing", "json", _json('{"vidA": {"0": {}}}'), "refuse", ("results.json", "field 'prediction_masks'")),
        Case("masks-number", "json", _json(one % "12"), "refuse", ("field 'prediction_masks'",)),
        Case("empty-file", "json", _json(b""), "refuse", ("results.json",)),
        Case("bom-only", "json", _json(b"\xef\xbb\xbf"), "refuse", ("results.json",)),
    ]
    for size in ([2**63, 1], [1, 2**63], [2**64, 2**64], [2**31, 1], [-1, 16], [12.5, 16], [12], [True, True], ["12", 16],
                 [2**62, 2], [10**300, 1], None, [12, 16, 1]):
        obj = one % json.dumps([{"size": size, "counts": "0"}, None])
        cases.append(Case(f"rle-size-{str(size)[:24]}", "json", _json(obj), "issue", ("corrupt_mask",)))
    counts = {
        "3m-chars": "0" * 3_000_000,  # over the counts_chars limit
        "1m-continuation": "P" * 1_000_000 + "0",  # one value a million characters long
        "20-char-value": "P" * 19 + "0",
        "70-char-value": "P" * 69 + "0",
        "10k-long-values": ("P" * 40 + "0") * 10_000,
        "1m-ones": "1" * 1_000_000,
        "negative-runs": "3>" * 1000,
        "bad-chars": "\x7f~~~",
        "ends-mid-value": "0P",
        "list-counts-huge": [2**40, 2**40],
        "list-counts-strings": ["a"],
        "bytes-like": {"x": 1},
    }
    for name, c in counts.items():
        obj = one % json.dumps([{"size": [H, W], "counts": c}])
        cases.append(Case(f"counts-{name}", "json", _json(obj), "issue", ("corrupt_mask",)))
    def expressions(n: int, masks: int) -> Callable[[Path], Path]:  # JSON text made directly: dumps is slow
        one_exp = '{"prediction_masks": [' + ", ".join(["null"] * masks) + "]}"
        return lambda d: _write(d / "results.json", ('{"vidA": {' + ", ".join(f'"{i}": {one_exp}' for i in range(n))
                                                     + "}}").encode())

    cases.append(Case("million-nulls-one-exp", "caps", expressions(1, 1_000_000), "issue", ("corrupt_mask", "frame_count")))
    # Junk masks in an expression that is not scored: validated up to a budget, never one
    # exception each (4.9 million of these took 64 s and 6 GB).
    for name, junk in (("empty-objects", "{}"), ("strings", '"x"'), ("numbers", "1"), ("bad-sizes", '{"size": 1, "counts": 1}')):
        cases.append(Case(f"million-{name}-extra-exp", "caps", lambda d, j=junk: _write(
            d / "results.json", ('{"vidA": {"9": {"prediction_masks": [' + ", ".join([j] * 1_000_000) + "]}}}").encode()),
            "issue", ("extra_expression", "corrupt_mask", "not_checked")))
    cases.append(Case("250k-expressions", "caps", expressions(250_000, 2), "refuse", ("results.json", "limit 'expressions'")))
    cases.append(Case("6m-masks", "caps", expressions(120_000, 50), "refuse",
                      ("results.json", "field 'prediction_masks'", "limit 'masks'")))
    cases.append(Case("masks-limit-lowered", "caps", _json(good), "refuse", ("limit 'masks'",), ("--limit", "masks=5")))
    cases.append(Case("entry-limit-lowered", "caps", _json(text + " " * (2 << 20)), "refuse", ("results.json", "entry_mb"),
                      ("--limit", "entry_mb=1")))
    cases.append(Case("counts-limit-lowered", "caps", _json(good), "issue", ("corrupt_mask",), ("--limit", "counts_chars=3")))
    cases.append(Case("pixels-limit-lowered", "caps", _tree(good_tree()), "issue", ("too_large",), ("--limit", "image_pixels=100")))
    cases.append(Case("files-limit-lowered", "caps", _tree(good_tree()), "refuse", ("limit 'files'",), ("--limit", "files=3")))
    # The limits reach worker processes too.
    cases.append(Case("counts-limit-workers", "caps", _json(good), "issue", ("corrupt_mask",),
                      ("--limit", "counts_chars=3", "--workers", "2")))
    cases.append(Case("pixels-limit-workers", "caps", _zip("s.zip", tree_entries(good_tree())), "issue", ("too_large",),
                      ("--limit", "image_pixels=100", "--workers", "2")))
    cases.append(Case("unknown-limit", "caps", _json(good), "refuse", ("--limit", "bogus"), ("--limit", "bogus=3")))
    cases.append(Case("zero-limit", "caps", _json(good), "refuse", ("--limit",), ("--limit", "masks=0")))
    cases.append(Case("good-results", "control", _json(good), "ok"))
    cases.append(Case("good-tree", "control", _tree(good_tree()), "ok"))
    cases.append(Case("good-zip", "control", _zip("s.zip", tree_entries(good_tree())), "ok"))
    return cases


def name_cases() -> list[Case]:
    def bad_name(raw: bytes) -> Callable[[Path], Path]:
        def build(d: Path) -> Path:
            root = write_tree(d / "sub", good_tree())
            with open(os.path.join(os.fsencode(root), raw), "wb") as fh:
                fh.write(png_l(gt_mask(1, 0)))
            return root
        return build

    def bad_dir(raw: bytes) -> Callable[[Path], Path]:
        def build(d: Path) -> Path:
            root = write_tree(d / "sub", good_tree())
            sub = os.path.join(os.fsencode(root), raw)
            os.makedirs(sub)
            with open(os.path.join(sub, b"00000.png"), "wb") as fh:
                fh.write(png_l(gt_mask(1, 0)))
            return root
        return build

    cases = []
    for i, raw in enumerate([b"vidA/0/\xff.png", b"\xe9t\xe9.png", b"vidB/\x80\x81", b"\xed\xa0\x80.png"]):
        cases.append(Case(f"non-utf8-file-{i}", "names", bad_name(raw), "refuse", ("not valid UTF-8", "field 'name'")))
    for i, raw in enumerate([b"vid\xff", b"vidA/\xc3(", b"Annotations/\xfe\xfe/0"]):
        cases.append(Case(f"non-utf8-folder-{i}", "names", bad_dir(raw), "refuse", ("not valid UTF-8", "field 'name'")))

    def non_utf8_pred_path(d: Path) -> Path:
        p = Path(os.fsdecode(os.path.join(os.fsencode(d), b"r\xff.json")))
        return _write(p, json.dumps(good_results()).encode())

    cases.append(Case("non-utf8-pred-path", "names", non_utf8_pred_path, "ok"))
    cases.append(Case("zip-slip", "names", _zip("s.zip", tree_entries(good_tree()) + [entry("../../escape.png", b"x"),
                                                                                     entry("/tmp/abs.png", b"x")]),
                      "issue", ("unsafe_entry",)))
    return cases


def random_cases(seed: int = 12, n_each: int = 20) -> list[Case]:
    """Seeded byte-level damage to valid submissions: whatever happens, it must be an
    answer (scored, with issues, or refused in one line)."""
    rng = random.Random(seed)
    zipped = raw_zip(tree_entries(good_tree()))
    results = json.dumps(good_results()).encode()
    zipped_json = raw_zip([entry("results.json", results)])
    cases = []

    def damage(data: bytes, k: int) -> bytes:
        buf = bytearray(data)
        for _ in range(k):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        return bytes(buf)

    for i in range(n_each):
        cases.append(Case(f"rand-zip-flip-{i}", "random", lambda d, b=damage(zipped, 1 + i % 8): _write(d / "r.zip", b), "any"))
        cut = rng.randrange(len(zipped))
        cases.append(Case(f"rand-zip-cut-{i}", "random", lambda d, b=zipped[:cut]: _write(d / "r.zip", b), "any"))
        cases.append(Case(f"rand-zipjson-flip-{i}", "random",
                          lambda d, b=damage(zipped_json, 1 + i % 5): _write(d / "r.zip", b), "any"))
        cases.append(Case(f"rand-json-flip-{i}", "random", _json(damage(results, 1 + i % 6)), "any"))
        cut = rng.randrange(len(results))
        cases.append(Case(f"rand-json-cut-{i}", "random", _json(results[:cut]), "any"))
        tree = good_tree()
        key = rng.choice(sorted(tree))
        tree[key] = damage(tree[key], 1 + i % 10)
        cases.append(Case(f"rand-png-flip-{i}", "random", _tree(tree), "any"))
    return cases


def all_cases() -> list[Case]:
    cases = (not_plain_file_cases() + symlink_cases() + ambiguous_cases() + zip_entry_cases() + image_cases()
             + mask_mode_cases() + results_json_cases() + name_cases() + parquet_cases() + random_cases())
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes
    seconds: float
    timed_out: bool


def run_forked(argv: list[str], logs: Path, cwd: Path, timeout: float = CASE_TIMEOUT_S) -> Outcome:
    """`refsav <argv>` in a forked child of this process: exit code, output, peak RSS, time.

    Meant for `runner`, a fresh process: a forked child starts with its parent's resident
    pages, so its peak RSS is that of a standalone `refsav score` only when the parent
    is as small as one."""
    out_log, err_log = logs.with_suffix(".out"), logs.with_suffix(".err")
    with open("/proc/self/status") as fh:
        vm_size = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    # A safety net only (the check is on peak RSS): far above any sane case, so that a
    # runaway read fails with a MemoryError instead of exhausting the machine.
    address_space = vm_size + 4 * GIB
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        code = 98
        try:
            os.chdir(cwd)
            for fd, path in ((1, out_log), (2, err_log)):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
            sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
            sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
            code = main(argv)
        except BaseException:
            traceback.print_exc()
            code = 99
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code if isinstance(code, int) else 97)
    timed_out = False
    while True:
        wpid, status, usage = os.wait4(pid, os.WNOHANG)
        if wpid:
            break
        if time.monotonic() - start > timeout:
            os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            timed_out = True
            break
        time.sleep(0.003)
    return Outcome(os.waitstatus_to_exitcode(status), out_log.read_text(errors="replace"),
                   err_log.read_text(errors="replace"), usage.ru_maxrss * 1024, time.monotonic() - start, timed_out)


def runner(jobs_file: Path, results_file: Path) -> None:
    """Run the jobs of ``jobs_file`` (argv, log stem, cwd), one forked child each, and
    write their outcomes: a fresh, small process, so peaks are a standalone run's."""
    jobs = json.loads(jobs_file.read_text())
    # Everything the command imports lazily, loaded once here rather than once per child.
    for module in ("pyarrow.parquet", "PIL.PngImagePlugin", "refsav.benchmark.cli", "refsav.benchmark.score",
                   "refsav.runtime.progress", "rich.table", "rich.console"):
        importlib.import_module(module)
    warm = jobs[0]  # the control case: scores, and pulls in whatever else the command imports
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main(warm["argv"][:-1] + [warm["argv"][-1] + "-warm"])
    outcomes = [run_forked(job["argv"], Path(job["logs"]), Path(job["cwd"])).__dict__ for job in jobs]
    results_file.write_text(json.dumps(outcomes))


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every path under the roots (links not followed) with its type, size and mtime."""
    seen = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                seen[p] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
    return seen


def check(case: Case, outcome: Outcome, out: Path) -> list[str]:
    problems = []
    if outcome.timed_out:
        return [f"hung (killed after {CASE_TIMEOUT_S} s)"]
    if "Traceback" in outcome.stderr or outcome.code in (97, 98, 99):
        return [f"traceback (exit {outcome.code}): {outcome.stderr[-1500:]}"]
    if outcome.peak_rss >= PEAK_RSS_LIMIT:
        problems.append(f"peak RSS {outcome.peak_rss >> 20} MiB")
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("error:") or line.startswith("Error:")]
    written = sorted(p.name for p in out.iterdir()) if out.exists() else []
    if written not in ([], ["scores.json"]):
        problems.append(f"--out holds {written}")
    refused = outcome.code == 2
    if case.expect == "refuse" or (case.expect == "any" and refused):
        if not refused:
            problems.append(f"expected a refusal, got exit {outcome.code}; stderr {outcome.stderr[-300:]!r}")
        elif len(errors) != 1:
            problems.append(f"refusal is not one error line: {outcome.stderr[-500:]!r}")
        elif written:
            problems.append("refused but wrote scores.json")
        else:
            missing = [n for n in case.needles if n not in errors[0]]
            if missing:
                problems.append(f"error line lacks {missing}: {errors[0]!r}")
        return problems
    if outcome.code != 0:
        return problems + [f"expected a score, got exit {outcome.code}: {outcome.stderr[-500:]!r}"]
    if written != ["scores.json"]:
        return problems + ["scored but no scores.json"]
    scores = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    kinds = set(scores["validation"]["by_kind"])
    if case.expect == "ok" and kinds:
        problems.append(f"expected no issues, got {sorted(kinds)}")
    missing = [k for k in case.needles if k not in kinds]
    if case.expect == "issue" and missing:
        problems.append(f"issues lack {missing}; got {scores['validation']['issues'][:5]}")
    if case.expect == "ok" and scores["J&F"] != 100.0:
        problems.append(f"J&F {scores['J&F']} instead of 100")
    return problems


@pytest.mark.timeout(300)
def test_malformed_submissions_are_answered_not_crashed(tmp_path):
    gt = tmp_path / "gt"
    write_gt(gt)
    cases = all_cases()
    families = {c.family for c in cases}
    assert len(cases) >= 300, len(cases)
    assert {"not-plain", "symlink", "ambiguous", "zip-entry", "huge-image", "mask-mode", "json", "names", "caps"} <= families
    work, outs, logs, cwd = (tmp_path / n for n in ("cases", "outs", "logs", "cwd"))
    for d in (work, outs, logs, cwd):
        d.mkdir()
    preds = {}
    for i, case in enumerate(cases):
        preds[case.name] = case.build(work / f"{i:03d}")
    control = next(i for i, c in enumerate(cases) if c.name == "good-tree")
    order = [control] + [i for i in range(len(cases)) if i != control]
    argvs = {i: ["score", "--protocol", "refsav", "--gt", str(gt), "--pred", str(preds[cases[i].name]),
                 "--out", str(outs / f"{i:03d}"), *cases[i].args] for i in order}
    jobs = [{"argv": argvs[i], "logs": str(logs / f"{i:03d}"), "cwd": str(cwd)} for i in order]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    before = snapshot(work, gt, cwd)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, str(tmp_path / "jobs.json"), str(tmp_path / "results.json")],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcomes = [Outcome(**o) for o in json.loads((tmp_path / "results.json").read_text())]
    failures, timing, peaks = [], [], []
    for i, outcome in zip(order, outcomes):
        case = cases[i]
        timing.append((outcome.seconds, case.name))
        peaks.append((outcome.peak_rss, case.name))
        for problem in check(case, outcome, outs / f"{i:03d}"):
            failures.append(f"{case.family}/{case.name}: {problem}")
    after = snapshot(work, gt, cwd)
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    assert not changed, f"written outside --out: {changed[:10]}"
    assert not (tmp_path / "escape.png").exists() and not (work.parent / "escape.png").exists()
    total = time.monotonic() - started
    slowest = sorted(timing, reverse=True)[:3]
    print(f"{len(cases)} cases in {total:.1f} s; slowest {[(round(s, 2), n) for s, n in slowest]}; "
          f"peak RSS {max(peaks)[0] >> 20} MiB ({max(peaks)[1]})")
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures[:40])


def test_limits_parse_and_the_submission_hash_is_unchanged(tmp_path):
    from refsav.benchmark.files import SubmissionLimits
    from refsav.benchmark.inputs import submission_sha256
    from refsav.schemas import SchemaError

    limits = SubmissionLimits().with_options(["entry_mb=2", "masks=1_000", "counts-chars=7"])
    assert (limits.max_entry_bytes, limits.max_masks, limits.max_counts_chars) == (2 << 20, 1000, 7)
    assert limits.max_files == SubmissionLimits().max_files
    for bad in ("entry_mb", "nope=1", "masks=-1", "masks=x"):
        with pytest.raises(SchemaError, match="limit"):
            SubmissionLimits().with_options([bad])
    # A plain folder hashes as it always did: sorted (path, sha256) pairs, so leaderboard
    # entries made before the reader was hardened keep their identity.
    root = write_tree(tmp_path / "sub", {**good_tree(), "a-b/x.png": b"1", "a/b/x.png": b"2", "a/c": b"3"})
    import hashlib

    want = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        want.update(p.relative_to(root).as_posix().encode() + b"\0")
        want.update(hashlib.sha256(p.read_bytes()).digest())
    assert submission_sha256(root) == want.hexdigest()
    data = (root / FIRST_PNG).read_bytes()
    assert submission_sha256(root / FIRST_PNG) == hashlib.sha256(data).hexdigest()


if __name__ == "__main__":
    runner(Path(sys.argv[1]), Path(sys.argv[2]))
