"""`refsav score` on malformed ground truth: every case is one line naming the file (and the
record and field where there is one), never a traceback, a hang, a write outside --out or a
gigabyte of memory.

Each case runs the real command line (``refsav.cli.main``) in a forked child of this process,
so that a case costs milliseconds instead of an interpreter start: the child has an alarm
(a hang kills it), an address-space limit, its own working and temporary folders, and the
parent reads its exit status and peak resident memory from ``wait4``.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import resource
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from pycocotools import mask as coco

from refsav.schemas.limits import MAX_FRAME_SIDE

H, W, T = 24, 32, 3
CASE_SECONDS = 20  # the alarm; a case normally takes well under a second
MEMORY_LIMIT = 1 << 30  # peak resident memory allowed per case
GT_FILES = ("meta_expressions_valid.json", "mask_dict.json", "mask_dict_foreground.json", "mask_dict.pkl")


def _rle(mask: np.ndarray) -> dict:
    r = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")}


def _box(t: int, k: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[2 + t + k : 10 + t + k, 3 + 2 * k : 14 + 2 * k] = True
    return m


def base_meta() -> dict:
    videos = {}
    for v in range(2):
        exps = {}
        for k in range(2):
            exps[str(k)] = {"exp": f"object {k}", "obj_id": [k], "anno_id": [10 * v + k], "type_id": k}
        videos[f"v{v}"] = {"frames": [f"{t:05d}" for t in range(T)], "expressions": exps, "height": H, "width": W}
    return {"videos": videos}


def base_masks() -> dict:
    return {str(10 * v + k): [_rle(_box(t, k)) for t in range(T)] for v in range(2) for k in range(2)}


def base_foreground() -> dict:
    return {f"v{v}": {"masks_rle": [_rle(_box(t, 0) | _box(t, 1)) for t in range(T)],
                      "foreground_ratio": [0.1] * T} for v in range(2)}


def base_predictions() -> dict:
    return {f"v{v}": {str(k): {"prediction_masks": [_rle(_box(t, k)) for t in range(T)]} for k in range(2)}
            for v in range(2)}


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    name: str
    mutate: Callable[[Path], None]  # edits a copy of the valid ground-truth folder
    expect: tuple[str, ...]  # substrings of the one error line (file, record, field, what)
    protocol: str = "refsav"
    code: int = 2
    issue: str | None = None  # exit 0: the kind of issue scores.json must list
    gt_arg: str | None = None  # pass this path inside the folder as --gt instead of the folder


def meta_edit(fn: Callable[[dict], None]) -> Callable[[Path], None]:
    def mutate(gt: Path) -> None:
        meta = json.loads((gt / GT_FILES[0]).read_text())
        fn(meta)
        (gt / GT_FILES[0]).write_text(json.dumps(meta))  # NaN and Infinity are written as such
    return mutate


def exp0(fn: Callable[[dict], None]) -> Callable[[Path], None]:
    return meta_edit(lambda m: fn(m["videos"]["v0"]["expressions"]["0"]))


def video0(fn: Callable[[dict], None]) -> Callable[[Path], None]:
    return meta_edit(lambda m: fn(m["videos"]["v0"]))


def masks_edit(fn: Callable[[dict], None]) -> Callable[[Path], None]:
    def mutate(gt: Path) -> None:
        masks = json.loads((gt / "mask_dict.json").read_text())
        fn(masks)
        (gt / "mask_dict.json").write_text(json.dumps(masks))
    return mutate


def fg_edit(fn: Callable[[dict], None]) -> Callable[[Path], None]:
    def mutate(gt: Path) -> None:
        fg = json.loads((gt / GT_FILES[2]).read_text())
        fn(fg)
        (gt / GT_FILES[2]).write_text(json.dumps(fg))
    return mutate


def write_bytes(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda gt: (gt / name).write_bytes(data)


def as_folder(name: str) -> Callable[[Path], None]:
    def mutate(gt: Path) -> None:
        (gt / name).unlink()
        (gt / name).mkdir()
        (gt / name / "inside.json").write_text("{}")
    return mutate


def as_fifo(name: str) -> Callable[[Path], None]:
    def mutate(gt: Path) -> None:
        (gt / name).unlink()
        os.mkfifo(gt / name)
    return mutate


def as_device(name: str) -> Callable[[Path], None]:
    def mutate(gt: Path) -> None:
        (gt / name).unlink()
        (gt / name).symlink_to("/dev/zero")
    return mutate


def removed(name: str) -> Callable[[Path], None]:
    return lambda gt: (gt / name).unlink()


def pickled_masks(payload: bytes) -> Callable[[Path], None]:
    def mutate(gt: Path) -> None:
        (gt / "mask_dict.json").unlink()
        (gt / "mask_dict.pkl").write_bytes(payload)
    return mutate


def _set(d: dict, key: str, value) -> None:
    d[key] = value


def _del(d: dict, key: str) -> None:
    del d[key]


class _Shell:
    """Pickles as a call of os.system: what a crafted mask_dict.pkl would hold."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _shared_reference_bomb() -> bytes:
    big = {"size": [H, W], "counts": b"0" * 200_000}
    return pickle.dumps({str(10 * v + k): [big] * 5000 for v in range(2) for k in range(2)}, protocol=4)


_META, _MASKS, _FG, _PKL = GT_FILES[0], "mask_dict.json", GT_FILES[2], "mask_dict.pkl"
_NO_SIZES = lambda m: [v.pop(k) for v in m["videos"].values() for k in ("height", "width")]  # noqa: E731
# A valid RLE of a 100000x100000 frame: 10^10 pixels in three runs (each fits pycocotools' uint32).
_HUGE_RLE = {"size": [100_000, 100_000], "counts": coco.frPyObjects(
    {"size": [100_000, 100_000], "counts": [4_000_000_000, 4_000_000_000, 2_000_000_000]}, 100_000, 100_000
)["counts"].decode("ascii")}
_DEEP = b'{"videos": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

CASES = [
    # meta_expressions: the file itself
    Case("meta-not-json", write_bytes(_META, b"{videos: oops"), (_META, "not valid JSON")),
    Case("meta-not-utf8", write_bytes(_META, b'{"videos": {"\xff\xfe": 1}}'), (_META, "not UTF-8")),
    Case("meta-deep-nesting", write_bytes(_META, _DEEP), (_META, "nested too deeply")),
    Case("meta-huge-integer", write_bytes(_META, b'{"videos": {"v0": {"height": ' + b"9" * 6000 + b"}}}"),
         (_META, "number too long")),
    Case("meta-top-level-list", write_bytes(_META, b"[1, 2]"), (_META, "field 'videos'", "missing")),
    Case("meta-is-a-folder", as_folder(_META), (_META, "is a folder")),
    Case("meta-is-a-fifo", as_fifo(_META), (_META, "not a regular file")),
    Case("meta-is-a-device", as_device(_META), (_META, "not a regular file")),
    # meta_expressions: records and fields
    Case("videos-as-list", meta_edit(lambda m: _set(m, "videos", [1])), (_META, "field 'videos'", "got list")),
    Case("videos-null", meta_edit(lambda m: _set(m, "videos", None)), (_META, "field 'videos'", "got null")),
    Case("video-as-text", meta_edit(lambda m: _set(m["videos"], "v0", "x")), (_META, "record v0", "got str")),
    Case("frames-missing", video0(lambda v: _del(v, "frames")), (_META, "record v0", "field 'frames'")),
    Case("frames-as-text", video0(lambda v: _set(v, "frames", "00000")), (_META, "record v0", "field 'frames'")),
    Case("frames-with-number", video0(lambda v: _set(v, "frames", ["00000", 1, "00002"])),
         (_META, "record v0", "field 'frames'")),
    Case("frames-empty", video0(lambda v: _set(v, "frames", [])), (_META, "record v0", "field 'frames'")),
    Case("frames-duplicate", video0(lambda v: _set(v, "frames", ["00000", "00000", "00002"])),
         (_META, "record v0", "field 'frames'", "duplicate")),
    Case("expressions-as-list", video0(lambda v: _set(v, "expressions", [{"exp": "a"}])),
         (_META, "record v0", "field 'expressions'", "got list")),
    Case("expressions-null", video0(lambda v: _set(v, "expressions", None)),
         (_META, "record v0", "field 'expressions'", "got null")),
    Case("expression-as-list", video0(lambda v: _set(v["expressions"], "0", ["a"])),
         (_META, "record v0", "field 'expressions.0'")),
    Case("exp-missing", exp0(lambda e: _del(e, "exp")), (_META, "record v0", "field 'expressions.0.exp'")),
    Case("exp-as-number", exp0(lambda e: _set(e, "exp", 3)), (_META, "record v0", "field 'expressions.0.exp'")),
    Case("obj-id-as-object", exp0(lambda e: _set(e, "obj_id", {"a": 1})),
         (_META, "record v0", "field 'expressions.0.obj_id'")),
    Case("anno-id-fractional", exp0(lambda e: _set(e, "anno_id", [1.5])),
         (_META, "record v0", "field 'expressions.0.anno_id[0]'", "1.5")),
    Case("anno-id-nan", exp0(lambda e: _set(e, "anno_id", [float("nan")])),
         (_META, "record v0", "field 'expressions.0.anno_id[0]'", "nan")),
    Case("anno-id-text", exp0(lambda e: _set(e, "anno_id", ["ten"])),
         (_META, "record v0", "field 'expressions.0.anno_id[0]'")),
    Case("anno-id-bool", exp0(lambda e: _set(e, "anno_id", [True])),
         (_META, "record v0", "field 'expressions.0.anno_id[0]'")),
    Case("anno-id-nested", exp0(lambda e: _set(e, "anno_id", [[0]])),
         (_META, "record v0", "field 'expressions.0.anno_id[0]'")),
    Case("anno-id-count", exp0(lambda e: _set(e, "anno_id", [0, 1])),
         (_META, "record v0", "field 'expressions.0.anno_id'", "2 anno_ids for 1 obj_ids")),
    Case("anno-id-unknown", exp0(lambda e: _set(e, "anno_id", [999])),
         (_MASKS, "record v0/0", "field 'anno_id'", "999")),
    Case("anno-id-partly-missing", exp0(lambda e: _del(e, "anno_id")),
         (_META, "record v0", "field 'expressions.0.anno_id'", "other expressions")),
    Case("type-id-text", exp0(lambda e: _set(e, "type_id", "0")),
         (_META, "record v0", "field 'expressions.0.type_id'")),
    Case("type-id-list", exp0(lambda e: _set(e, "type_id", [0])),
         (_META, "record v0", "field 'expressions.0.type_id'")),
    Case("type-id-nan", exp0(lambda e: _set(e, "type_id", float("nan"))),
         (_META, "record v0", "field 'expressions.0.type_id'")),
    Case("type-id-fractional", exp0(lambda e: _set(e, "type_id", 0.5)),
         (_META, "record v0", "field 'expressions.0.type_id'")),
    Case("type-id-unknown", exp0(lambda e: _set(e, "type_id", 7)), (), code=0, issue="unknown_type_id"),
    Case("height-text", video0(lambda v: _set(v, "height", "24")), (_META, "record v0", "field 'height'")),
    Case("height-list", video0(lambda v: _set(v, "height", [24])), (_META, "record v0", "field 'height'")),
    Case("height-nan", video0(lambda v: _set(v, "height", float("nan"))), (_META, "record v0", "field 'height'")),
    Case("height-infinite", video0(lambda v: _set(v, "height", float("inf"))), (_META, "record v0", "field 'height'")),
    Case("height-zero", video0(lambda v: _set(v, "height", 0)), (_META, "record v0", "field 'height'", "positive")),
    Case("width-missing", video0(lambda v: _del(v, "width")), (_META, "record v0", "field 'width'")),
    Case("size-100000x100000", video0(lambda v: v.update(height=100_000, width=100_000)),
         (_META, "record v0", "field 'height'", "limit")),
    Case("size-one-side-too-long", video0(lambda v: v.update(height=4, width=MAX_FRAME_SIDE + 1)),
         (_META, "record v0", "field 'height'", "limit")),
    Case("meta-missing", removed(_META), ("no meta_expressions",)),
    Case("gt-is-a-file", lambda gt: None, (_META, "no meta_expressions"), gt_arg=_META),
    Case("gt-is-a-fifo", lambda gt: os.mkfifo(gt / "fifo"), ("fifo", "no meta_expressions"), gt_arg="fifo"),
    Case("gt-is-a-device", lambda gt: (gt / "zero").symlink_to("/dev/zero"), ("zero", "no meta_expressions"),
         gt_arg="zero"),
    # mask_dict.json
    Case("masks-not-json", write_bytes(_MASKS, b"\x00\x01garbage"), (_MASKS,)),
    Case("masks-as-list", write_bytes(_MASKS, b"[]"), (_MASKS, "keyed by anno_id")),
    Case("masks-entry-as-object", masks_edit(lambda m: _set(m, "0", {"a": 1})), (_MASKS, "record 0", "got dict")),
    Case("masks-bad-counts", masks_edit(lambda m: _set(m["0"], 1, {"size": [H, W], "counts": "!!"})),
         (_MASKS, "record 0", "[1]")),
    Case("masks-size-as-text", masks_edit(lambda m: _set(m["0"], 0, {"size": "24x32", "counts": "0"})),
         (_MASKS, "record 0", "size")),
    Case("masks-wrong-size", masks_edit(lambda m: _set(m["1"], 0, _rle(np.ones((H + 1, W), bool)))),
         (_MASKS, "record 1[0]", "field 'size'")),
    Case("masks-100000x100000-from-masks",
         lambda gt: (meta_edit(_NO_SIZES)(gt), masks_edit(lambda m: _set(m["0"], 0, _HUGE_RLE))(gt)),
         (_MASKS, "record 0[0]", "field 'size'", "limit")),
    Case("masks-too-few-frames", masks_edit(lambda m: m["11"].pop()), (_MASKS, "record v1/1", "2 masks for 3 frames")),
    Case("masks-is-a-folder", as_folder(_MASKS), (_MASKS, "is a folder")),
    Case("masks-is-a-fifo", as_fifo(_MASKS), (_MASKS, "not a regular file")),
    Case("masks-is-a-device", as_device(_MASKS), (_MASKS, "not a regular file")),
    Case("masks-missing", removed(_MASKS), ("no mask_dict.json or mask_dict.pkl",)),
    # mask_dict.pkl (VISA / Sa2VA)
    Case("pickle-runs-a-command", pickled_masks(pickle.dumps({"0": [_Shell()]}, protocol=2)),
         (_PKL, "global", "system")),
    Case("pickle-protocol-0-global", pickled_masks(b"cos\nsystem\n(S'touch pwned'\ntR."), (_PKL, "os.system")),
    Case("pickle-truncated", pickled_masks(pickle.dumps(base_masks())[:50]), (_PKL, "not a readable pickle")),
    Case("pickle-shared-reference-bomb", pickled_masks(_shared_reference_bomb()), (_PKL, "shared references")),
    Case("pickle-not-a-dict", pickled_masks(pickle.dumps([1, 2, 3])), (_PKL, "keyed by anno_id")),
    # mask_dict_foreground.json (ReVOS)
    Case("fg-not-json", write_bytes(_FG, b"{"), (_FG, "not valid JSON"), protocol="revos"),
    Case("fg-as-list", write_bytes(_FG, b"[]"), (_FG, "keyed by video id"), protocol="revos"),
    Case("fg-entry-without-masks", fg_edit(lambda f: _set(f, "v0", {"foreground_ratio": []})),
         (_FG, "record v0", "field 'masks_rle'"), protocol="revos"),
    Case("fg-masks-as-text", fg_edit(lambda f: _set(f["v0"], "masks_rle", "x")),
         (_FG, "record v0", "field 'masks_rle'"), protocol="revos"),
    Case("fg-bad-rle", fg_edit(lambda f: _set(f["v0"]["masks_rle"], 1, {"size": [H, W]})),
         (_FG, "record v0", "field 'masks_rle[1].counts'"), protocol="revos"),
    Case("fg-too-few-frames", fg_edit(lambda f: f["v1"]["masks_rle"].pop()),
         (_FG, "record v1", "field 'masks_rle'", "2 masks for 3 frames"), protocol="revos"),
    Case("fg-wrong-size", fg_edit(lambda f: _set(f["v1"]["masks_rle"], 2, _rle(np.ones((H, W + 2), bool)))),
         (_FG, "record v1.masks_rle[2]", "field 'size'"), protocol="revos"),
    Case("fg-is-a-folder", as_folder(_FG), (_FG, "is a folder"), protocol="revos"),
    Case("fg-is-a-fifo", as_fifo(_FG), (_FG, "not a regular file"), protocol="revos"),
]


# --------------------------------------------------------------------------- harness


@dataclass
class Outcome:
    code: int  # exit status, or -signal
    stdout: str
    stderr: str
    seconds: float
    peak_bytes: int


def run_in_child(argv: list[str], cwd: Path, tmp: Path, out_files: Path) -> Outcome:
    """`refsav <argv>` in a forked child with an alarm and a memory ceiling."""
    stdout_path, stderr_path = out_files / "stdout", out_files / "stderr"
    (out_files / "rss0").unlink(missing_ok=True)
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        code = 3
        try:
            # The forked child starts out resident with all of pytest's pages (models
            # loaded by earlier tests included); the case is charged only what it adds.
            (out_files / "rss0").write_text(str(_vm_rss()))
            signal.alarm(CASE_SECONDS)
            os.chdir(cwd)
            os.environ["TMPDIR"] = str(tmp)
            import tempfile

            tempfile.tempdir = str(tmp)
            # Virtual memory is capped well above the resident limit the parent checks
            # (NumPy and BLAS reserve address space they never touch); a runaway
            # allocation fails here instead of exhausting the machine.
            soft = _vm_size() + 4 * MEMORY_LIMIT
            resource.setrlimit(resource.RLIMIT_AS, (soft, soft))
            for fd, path in ((1, stdout_path), (2, stderr_path)):
                target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(target, fd)
                os.close(target)
            sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), write_through=True)
            sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), write_through=True)
            from refsav.cli import main

            code = main(argv)
        except BaseException:  # what a user would see as a traceback
            traceback.print_exc()
            code = 4
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.monotonic() - start
    code = os.waitstatus_to_exitcode(status)
    rss0 = out_files / "rss0"
    baseline = int(rss0.read_text()) if rss0.exists() else 0
    return Outcome(code, stdout_path.read_text(errors="replace"), stderr_path.read_text(errors="replace"),
                   seconds, max(0, usage.ru_maxrss * 1024 - baseline))


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _vm_size() -> int:
    return _status_bytes("VmSize")


def _vm_rss() -> int:
    return _status_bytes("VmRSS")


def snapshot(root: Path, skip: Path) -> dict[str, tuple]:
    """Every path under root except `skip`, with what would show a write."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if Path(dirpath) / d != skip]
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def valid_gt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("valid")
    (root / _META).write_text(json.dumps(base_meta()))
    (root / _MASKS).write_text(json.dumps(base_masks()))
    (root / _FG).write_text(json.dumps(base_foreground()))
    (root / "pred").mkdir()
    (root / "pred" / "results.json").write_text(json.dumps(base_predictions()))
    return root


@pytest.mark.skipif(not hasattr(os, "fork") or not Path("/proc/self/status").exists(), reason="needs fork and /proc")
def test_every_malformed_ground_truth_is_one_line(valid_gt, tmp_path):
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)
    # The untouched ground truth scores perfectly with both protocols: the failures below
    # come from the one edit each case makes.
    for protocol in ("refsav", "revos"):
        work = tmp_path / f"ok-{protocol}"
        shutil.copytree(valid_gt, work)
        (work / "cwd").mkdir()
        (work / "tmp").mkdir()
        ok = run_in_child(["score", "--protocol", protocol, "--gt", str(work), "--pred", str(work / "pred" / "results.json"),
                           "--out", str(work / "out")], work / "cwd", work / "tmp", work)
        assert ok.code == 0, ok.stderr
        assert json.loads((work / "out" / "scores.json").read_text())["J&F"] == 100.0

    failures = []
    slowest = 0.0
    peaks: list[tuple[int, str]] = []
    for case in CASES:
        case_dir = tmp_path / case.name
        gt = case_dir / "gt"
        shutil.copytree(valid_gt, gt, ignore=shutil.ignore_patterns("pred"))
        if case.protocol != "revos":
            (gt / _FG).unlink()
        case.mutate(gt)
        pred = case_dir / "pred"
        shutil.copytree(valid_gt / "pred", pred)
        for sub in ("cwd", "tmp"):
            (case_dir / sub).mkdir()
        captured = tmp_path / "io" / case.name  # the harness's own files, outside what is watched
        captured.mkdir(parents=True)
        out = case_dir / "out"
        before = snapshot(case_dir, out)
        gt_arg = gt / case.gt_arg if case.gt_arg else gt
        got = run_in_child(["score", "--protocol", case.protocol, "--gt", str(gt_arg), "--pred", str(pred / "results.json"),
                            "--out", str(out)], case_dir / "cwd", case_dir / "tmp", captured)
        slowest = max(slowest, got.seconds)
        peaks.append((got.peak_bytes, case.name))
        after = snapshot(case_dir, out)
        problems = []
        if "Traceback" in got.stderr or got.code in (3, 4):
            problems.append(f"traceback:\n{got.stderr[-2000:]}")
        if got.code < 0:
            problems.append(f"killed by signal {-got.code} (alarm: a hang)" if got.code == -signal.SIGALRM
                            else f"killed by signal {-got.code}")
        if got.peak_bytes >= MEMORY_LIMIT:
            problems.append(f"peak memory {got.peak_bytes / 2**20:.0f} MiB")
        if before != after:
            changed = sorted(set(before.items()) ^ set(after.items()))
            problems.append(f"wrote outside --out: {changed[:4]}")
        if got.code != case.code:
            problems.append(f"exit {got.code}, expected {case.code}: {got.stderr.strip()[-500:]}")
        elif case.code == 2:
            # A progress bar started before the failure is erased, so the error is alone.
            lines = [ln for ln in got.stderr.splitlines() if ln.strip()]
            if len(lines) != 1 or not lines[0].startswith("error: "):
                problems.append(f"expected one error line, got {lines!r}")
            else:
                missing = [s for s in case.expect if s not in lines[0]]
                if missing:
                    problems.append(f"{lines[0]!r} lacks {missing}")
            if out.exists():
                problems.append("wrote an --out folder for a run that failed")
        else:
            kinds = json.loads((out / "scores.json").read_text())["validation"]["by_kind"]
            if case.issue not in kinds:
                problems.append(f"issues {kinds}, expected {case.issue}")
        if (case_dir / "cwd" / "pwned").exists() or any((case_dir / "tmp").iterdir()) or any((case_dir / "cwd").iterdir()):
            problems.append("left files in the working or temporary folder")
        if problems:
            failures.append(f"{case.name}: " + "; ".join(problems))
    print("peak resident memory, largest cases:", [(n, f"{b / 2**20:.0f} MiB") for b, n in sorted(peaks)[-3:]])
    assert not failures, "\n".join(failures)
    assert slowest < CASE_SECONDS / 2


def test_davis_ground_truth_png_above_the_size_limit_is_refused_from_its_header(tmp_path, capsys):
    """A DAVIS ground-truth PNG that would decode to more than the frame limit is refused
    before its pixels are read (a 9000x10 image here; the header is all that is looked at)."""
    from PIL import Image

    from refsav.cli import main

    for folder in ("gt/seq", "pred/seq"):
        (tmp_path / folder).mkdir(parents=True)
    for t in range(3):
        Image.fromarray(np.zeros((MAX_FRAME_SIDE + 808, 10), np.uint8), mode="L").save(tmp_path / "gt" / "seq" / f"{t:05d}.png")
        Image.fromarray(np.zeros((4, 4), np.uint8), mode="L").save(tmp_path / "pred" / "seq" / f"{t:05d}.png")
    code = main(["score", "--protocol", "davis17-semi", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"),
                 "--sequences", "seq", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "00000.png" in err[-1] and "limit" in err[-1]
    assert not (tmp_path / "out").exists()
