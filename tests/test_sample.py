"""`refsav sample` end to end: files, determinism, decoders, and bad-input errors."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from refsav.pipelines.sample import CHUNK, EVAL, SampleConfig, write_sample
from refsav.schemas import SchemaError
from refsav.schemas import rle as rle_ops
from refsav.schemas.media import probe_video, read_frames
from refsav.schemas.refsav_json import read_refsav_json
from refsav.schemas.refvos import read_mask_dict, read_meta_expressions
from refsav.schemas.sav import read_sav_json

REFSAV = str(Path(sys.executable).with_name("refsav"))


def run_cli(*args, check=True):
    proc = subprocess.run([REFSAV, *args], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    run_cli("sample", "--out", str(out), "--videos", "2", "--frames", "30", "--seed", "7")
    return out


def test_sample_layout_and_cross_file_consistency(sample):
    anns = sorted((sample / CHUNK).glob("*_manual.json"))
    assert len(anns) == 2
    meta = {v.video_id: v for v in read_meta_expressions(sample / EVAL / "meta_expressions_valid.json")}
    mask_dict = read_mask_dict(sample / EVAL / "mask_dict.json")
    training = {v.video_id: v for v in read_refsav_json(sample / "Ref-SAV.json")}
    for path in anns:
        ann = read_sav_json(path)
        vid = ann.video.video_id
        video = probe_video(ann.video.path)
        assert (video.num_frames, video.width, video.height, video.fps) == (30, 640, 360, 24.0)
        assert len(ann.masklets[0].rles) == 8  # ceil(30 / 4)
        # The benchmark lists the annotated frames, each as a JPEG.
        assert meta[vid].frames == [f"{t:05d}" for t in range(0, 30, 4)]
        assert sorted(p.stem for p in (sample / EVAL / "videos" / vid).glob("*.jpg")) == meta[vid].frames
        # Ref-SAV training keys are masklet columns and point at files that exist.
        entry = training[vid]
        assert [o.index for o in entry.objects] == list(range(len(ann.masklets)))
        assert (sample / entry.video_path).exists() and (sample / entry.anno_path).exists()
        # Every benchmark expression's mask equals the SA-V masklet, null where invisible.
        long_count = 0
        for exp in meta[vid].expressions:
            (obj,), (anno,) = exp.obj_id, exp.anno_id
            masklet = ann.masklet(obj)
            for sav_rle, bench in zip(masklet.rles, mask_dict[str(anno)]):
                if bench is None:
                    assert rle_ops.area(sav_rle) == 0
                else:
                    assert np.array_equal(rle_ops.decode(bench), rle_ops.decode(sav_rle))
            long_count += exp.type_id == 0
            assert exp.type_id in (0, 1) and exp.exp.strip()
        assert long_count == len(ann.masklets)


def test_sample_is_deterministic_and_seed_dependent(tmp_path):
    def digest(root):
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "synthetic.json")
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    cfg = SampleConfig(videos=1, frames=12, seed=3)
    write_sample(tmp_path / "a", cfg, show_progress=False)
    write_sample(tmp_path / "b", cfg, show_progress=False)
    write_sample(tmp_path / "c", SampleConfig(videos=1, frames=12, seed=4), show_progress=False)
    a, b = digest(tmp_path / "a"), digest(tmp_path / "b")
    assert a == b and len(a) > 5
    masks_a = (tmp_path / "a" / EVAL / "mask_dict.json").read_text()
    masks_c = (tmp_path / "c" / EVAL / "mask_dict.json").read_text()
    assert masks_a != masks_c


def test_sample_videos_decode_with_pyav_and_opencv(sample):
    mp4 = sorted((sample / CHUNK).glob("*.mp4"))[0]
    jpeg = cv2.imread(str(sample / EVAL / "videos" / mp4.stem / "00008.jpg"))[:, :, ::-1]
    by_pyav = read_frames(mp4)
    cap = cv2.VideoCapture(str(mp4))
    by_cv2 = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        by_cv2.append(frame[:, :, ::-1])
    by_cv2 = np.stack(by_cv2)
    for frames in (by_pyav, by_cv2):
        assert frames.shape == (30, 360, 640, 3)
        # Same picture as the JPEG written from the rendered frame, up to compression.
        assert np.abs(frames[8].astype(int) - jpeg.astype(int)).mean() < 6
    assert frames.std() > 20  # photographs, not flat colours


def test_read_frames_gives_decords_pixels(sample):
    # read_frames used decord when installed; its PyAV decoding replaced it on these grounds.
    decord = pytest.importorskip("decord")
    for mp4 in sorted((sample / CHUNK).glob("*.mp4")):
        reader = decord.VideoReader(str(mp4), ctx=decord.cpu(0), num_threads=1)
        assert np.array_equal(read_frames(mp4), reader.get_batch(list(range(len(reader)))).asnumpy())
        some = [20, 3, 3, 8]
        assert np.array_equal(read_frames(mp4, some), reader.get_batch(some).asnumpy())


@pytest.mark.parametrize("size,shape", [("720p", (720, 1280)), ("1920x1080", (1080, 1920))])
def test_sample_supports_benchmark_resolutions(tmp_path, size, shape):
    run_cli("sample", "--out", str(tmp_path), "--videos", "1", "--frames", "5", "--size", size, "--objects", "3")
    ann = read_sav_json(next((tmp_path / CHUNK).glob("*_manual.json")))
    assert (ann.video.height, ann.video.width) == shape
    assert probe_video(ann.video.path).num_frames == 5
    assert len(ann.masklets) == 3 and ann.masklets[0].rles[0].size == shape


def test_truncated_mp4_gives_one_line_error(sample, tmp_path):
    src = sorted((sample / CHUNK).glob("*.mp4"))[0].read_bytes()
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(src[: len(src) // 2])
    with pytest.raises(SchemaError) as err:
        probe_video(bad)
    assert str(err.value).startswith(f"{bad}: ") and "\n" not in str(err.value)
    with pytest.raises(SchemaError, match="broken.mp4"):
        read_frames(bad)
    proc = run_cli("validate", str(bad), check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert [line for line in proc.stderr.splitlines() if line.startswith("BAD")] == [f"BAD {err.value}"]


def test_frame_count_mismatch_between_mp4_and_annotation(sample, tmp_path):
    ann_path = sorted((sample / CHUNK).glob("*_manual.json"))[0]
    mp4 = ann_path.with_name(ann_path.name.replace("_manual.json", ".mp4"))
    # Re-encode only the first 20 frames under the same name: the annotation wants 30.
    frames = read_frames(mp4)[:20]
    from refsav.pipelines.synthetic import write_mp4

    short = tmp_path / mp4.name
    write_mp4(short, frames)
    raw = json.loads(ann_path.read_text())
    (tmp_path / ann_path.name).write_text(json.dumps(raw))
    proc = run_cli("validate", str(tmp_path / ann_path.name), check=False)
    assert proc.returncode == 1 and "frame-count mismatch" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_user_errors_are_one_line(tmp_path):
    bad = tmp_path / "x_manual.json"
    bad.write_text(json.dumps({"video_id": "x"}))
    proc = run_cli("validate", str(bad), check=False)
    assert proc.returncode == 1
    assert f"BAD {bad}: field 'video_frame_count': required key is missing" in proc.stderr
    proc = run_cli("sample", "--out", str(tmp_path / "o"), "--size", "641x360", check=False)
    assert proc.returncode == 2 and "even" in proc.stderr and "Traceback" not in proc.stderr


def test_schema_command_exports_json_schema(tmp_path):
    run_cli("schema", "--out", str(tmp_path))
    names = sorted(p.name for p in tmp_path.glob("*.schema.json"))
    assert "video-results-json.schema.json" in names and "qa-prediction.schema.json" in names
    one = json.loads(run_cli("schema", "video-prediction").stdout)
    assert one["required"] == ["video_id", "expression_id", "frames", "rles"]
    proc = run_cli("schema", "nope", check=False)
    assert proc.returncode == 2 and "unknown format" in proc.stderr


def test_demo_runs(tmp_path):
    proc = run_cli("demo", "--out", str(tmp_path), "--videos", "1")
    assert "benchmark expressions" in proc.stdout and (tmp_path / "sample" / "Ref-SAV.json").exists()
