"""Visual prompts for the VLM: frame choice, crops, highlighting, JPEGs, decode planning."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from refsav.pipelines.visual.canvas import Canvas, crop_box, view_canvases
from refsav.pipelines.visual.frames import frame_view_bgr, output_size
from refsav.pipelines.visual.highlight import highlight
from refsav.pipelines.visual.masks import rle_box
from refsav.pipelines.visual.plan import ObjectPlan, plan_video
from refsav.pipelines.visual.selection import (
    NotVisible,
    frame_stats,
    scene_frame,
    select_object_frames,
    select_views,
    uniform_visible_frames,
)
from refsav.pipelines.visual.style import MODES, PALETTE, HighlightStyle
from refsav.pipelines.visual.views import ObjectViews, build_video_views, render_video, render_views
from refsav.pipelines.sample import CHUNK, SampleConfig, write_sample
from refsav.schemas import Masklet, SchemaError
from refsav.schemas import rle as rle_ops
from refsav.schemas import media
from refsav.schemas.media import YuvFrame, decode_frames, read_frames
from refsav.schemas.sav import read_sav_json

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("visual")
    write_sample(out, SampleConfig(videos=2, seed=5, width=640, height=360, frames=28, objects=3), show_progress=False)
    return [read_sav_json(p) for p in sorted((out / CHUNK).glob("*_manual.json"))]


@pytest.fixture(scope="module")
def decoded(sample):
    """Per video: (annotation, plan, frames as YuvFrames, frames as RGB)."""
    out = []
    for ann in sample:
        plan = plan_video(ann)
        out.append(
            (ann, plan, decode_frames(ann.video.path, plan.frames, yuv=True), decode_frames(ann.video.path, plan.frames))
        )
    return out


def square_masklet(boxes, height=100, width=160, stride=4, video_id="hand"):
    """A masklet whose annotated frame t holds a filled box (x0, y0, x1, y1), or None."""
    rles = []
    for box in boxes:
        m = np.zeros((height, width), np.uint8)
        if box is not None:
            x0, y0, x1, y1 = box
            m[y0:y1, x0:x1] = 1
        rles.append(rle_ops.encode(m))
    return Masklet.from_rles(video_id, 7, [i * stride for i in range(len(boxes))], rles)


def textured_frames(masklet, height=100, width=160, blur=()):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    frames = {}
    for f in masklet.frame_indices:
        frames[f] = cv2.GaussianBlur(base, (9, 9), 3) if f in blur else base.copy()
    return frames


# --------------------------------------------------------------------------- style


def test_style_rejects_bad_values_naming_the_field():
    with pytest.raises(SchemaError) as err:
        HighlightStyle(mode="arrow")
    assert "field 'mode'" in str(err.value) and "contour" in str(err.value)
    with pytest.raises(SchemaError, match="field 'colour'"):
        HighlightStyle(colour="chartreuse")
    with pytest.raises(SchemaError, match="field 'alpha'"):
        HighlightStyle(alpha=1.5)
    style = HighlightStyle()
    assert style.line_px(1536, 864) > style.line_px(768, 432) >= style.min_line_px


# --------------------------------------------------------------------------- frame selection


def test_selected_frames_are_annotated_visible_and_distinct(decoded):
    for ann, _, frames, _ in decoded:
        for m in ann.masklets:
            visible = {f for f, r in zip(m.frame_indices, m.rles) if rle_ops.area(r) > 0}
            picks = select_object_frames(m, frames, k=3)
            assert picks, m.object_id
            assert len(picks) == len(set(picks)) == min(3, len(visible))
            assert set(picks) <= visible <= set(m.frame_indices)
            assert scene_frame(m, frames) == picks[0]  # stage 2 shows the best stage-1 frame
            assert select_views(m, frames).scene_frame == picks[0]


def test_border_cut_largest_frame_loses_to_a_whole_smaller_one():
    # Frame 4 is the largest but touches the left border; frame 8 is whole.
    cut = square_masklet([None, (0, 30, 40, 70), (60, 30, 95, 65), (70, 40, 80, 50)])
    stats = {s.frame: s for s in frame_stats(cut)}
    assert stats[4].area > stats[8].area and stats[4].border_sides == 1 and stats[8].border_sides == 0
    assert stats[0].box is None and stats[0].score == 0
    assert select_object_frames(cut, {}, k=1) == [8]
    assert select_object_frames(cut, textured_frames(cut), k=1) == [8]
    # Control: the same large box away from the border wins.
    whole = square_masklet([None, (5, 30, 45, 70), (60, 30, 95, 65), (70, 40, 80, 50)])
    assert select_object_frames(whole, textured_frames(whole), k=1) == [4]


def test_sharpness_breaks_ties_between_equal_masks():
    m = square_masklet([(40, 20, 100, 80)] * 4)
    assert select_object_frames(m, textured_frames(m, blur={0, 4, 12}), k=1) == [8]
    assert select_object_frames(m, textured_frames(m, blur={4, 8, 12}), k=1) == [0]


def test_several_picks_are_spread_over_the_visible_span():
    boxes = [(40, 20, 100 + (i % 3), 80) for i in range(20)]  # nearly equal everywhere
    picks = select_object_frames(square_masklet(boxes), {}, k=3)
    assert len(picks) == 3
    span = 19 * 4
    assert min(abs(a - b) for a in picks for b in picks if a != b) >= span / 6


def test_uniform_visible_frames_span_the_visible_range_skipping_gaps():
    box = (10, 10, 30, 30)
    # annotated frames 0..96; visible on 8..36 and 56..88 only
    boxes = [box if (8 <= 4 * t <= 36 or 56 <= 4 * t <= 88) else None for t in range(25)]
    m = square_masklet(boxes)
    picks = uniform_visible_frames(m, n=5)
    assert picks == [8, 28, 56, 68, 88]  # targets 8, 28, 48, 68, 88; 48 is hidden, 56 is nearest
    assert picks == uniform_visible_frames(m, n=5)  # deterministic
    eight = uniform_visible_frames(m, n=8)
    assert len(eight) == 8 and eight[0] == 8 and eight[-1] == 88 and eight == sorted(set(eight))
    assert all(b is not None for b in (boxes[f // 4] for f in eight))
    # Fewer visible frames than asked: all of them.
    few = square_masklet([None, box, None, box, None])
    assert uniform_visible_frames(few, n=8) == [4, 12]


def test_uniform_frames_on_the_sample(sample):
    for ann in sample:
        for m in ann.masklets:
            picks = uniform_visible_frames(m, n=4)
            visible = [f for f, r in zip(m.frame_indices, m.rles) if rle_ops.area(r) > 0]
            assert picks[0] == visible[0] and picks[-1] == visible[-1]
            assert set(picks) <= set(visible) and len(picks) == min(4, len(visible))


# --------------------------------------------------------------------------- geometry


def test_crop_box_contains_box_and_margin_inside_the_frame():
    rng = np.random.default_rng(1)
    height, width = 360, 640
    for _ in range(500):
        x0, y0 = int(rng.integers(0, width - 1)), int(rng.integers(0, height - 1))
        x1, y1 = int(rng.integers(x0 + 1, width + 1)), int(rng.integers(y0 + 1, height + 1))
        margin, min_side = float(rng.choice([0.0, 0.3, 1.0])), int(rng.choice([1, 64, 128]))
        cx0, cy0, cx1, cy1 = crop_box((x0, y0, x1, y1), (height, width), margin, min_side)
        assert 0 <= cx0 < cx1 <= width and 0 <= cy0 < cy1 <= height
        assert cx0 % 2 == cy0 % 2 == cx1 % 2 == cy1 % 2 == 0
        mx, my = np.ceil(margin * (x1 - x0)), np.ceil(margin * (y1 - y0))
        assert cx0 <= max(0, x0 - mx) and cx1 >= min(width, x1 + mx)
        assert cy0 <= max(0, y0 - my) and cy1 >= min(height, y1 + my)
        assert cx1 - cx0 >= min(min_side, width) and cy1 - cy0 >= min(min_side, height)
    # A small box in a corner keeps its full minimum size, shifted into the frame.
    assert crop_box((0, 0, 10, 10), (height, width), 0.3, 128) == (0, 0, 128, 128)
    assert crop_box((600, 330, 640, 360), (height, width), 0.3, 128) == (512, 232, 640, 360)


def test_rle_box_matches_a_full_decode():
    rng = np.random.default_rng(2)
    for trial in range(20):
        h, w = int(rng.integers(5, 80)), int(rng.integers(5, 80))
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        if trial == 0:
            mask[:] = 0
        rle = rle_ops.encode(mask)
        for _ in range(5):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            x1, y1 = int(rng.integers(x0 + 1, w + 1)), int(rng.integers(y0 + 1, h + 1))
            assert np.array_equal(rle_box(rle, (x0, y0, x1, y1)), mask[y0:y1, x0:x1])


# --------------------------------------------------------------------------- highlighting


def _ring(mask_canvas: Canvas, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Full-image masks of the object and of a ring `width` px wide just outside it."""
    h, w = mask_canvas.image.shape[:2]
    inside = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = mask_canvas.mask_box
    inside[y0:y1, x0:x1] = mask_canvas.mask
    grown = cv2.dilate(inside, np.ones((2 * width + 1, 2 * width + 1), np.uint8))
    return inside.astype(bool), (grown > 0) & (inside == 0)


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_marks_the_object_and_makes_bounded_jpegs(decoded, mode):
    ann, _, frames, _ = decoded[0]
    style = HighlightStyle(mode=mode, colour="red", max_side=400, video_max_side=256)
    m = max(ann.masklets, key=lambda m: m.mean_area)
    views = render_views(m, frames, style, k=2, n_video_frames=4)
    assert isinstance(views, ObjectViews) and views.mode == mode and views.colour == "red"
    assert len(views.object_views) == 2 and len(views.video_views) == 4
    for view, bound in [(v, 400) for v in (*views.object_views, views.scene_view)] + [(v, 256) for v in views.video_views]:
        assert view.jpeg[:2] == b"\xff\xd8"
        image = cv2.imdecode(np.frombuffer(view.jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape[:2] == (view.height, view.width)
        assert max(view.width, view.height) <= bound

    selection = select_views(m, frames, 2, 4)
    canvas = view_canvases(m, frames, selection, style).scene_view
    drawn = highlight(canvas, style, "red").astype(int)
    plain = canvas.image.astype(int)
    inside, ring = _ring(canvas, style.line_px(*canvas.image.shape[1::-1]))
    changed = np.abs(drawn - plain).sum(axis=2) > 0
    red = np.array([30, 30, 235])  # BGR
    if mode == "contour":
        assert not changed[inside].any()  # the object's own pixels reach the VLM untouched
        assert changed[ring].mean() > 0.8
        assert np.abs(drawn[ring] - red).mean() < np.abs(plain[ring] - red).mean() / 2
    elif mode == "tint":
        assert changed[inside].mean() > 0.9 and not changed[~inside].any()
    elif mode == "box":
        x0, y0, x1, y1 = canvas.mask_box
        assert changed.any() and not changed[y0:y1, x0:x1].any()  # the line is outside the box
        rows, cols = np.nonzero(changed)
        assert rows.min() < y0 and rows.max() >= y1 and cols.min() < x0 and cols.max() >= x1
    else:  # crop: the outside is darkened, the object untouched
        assert not changed[inside].any()
        assert drawn[~inside].mean() < 0.75 * plain[~inside].mean()

    # The JPEG sent is the highlighted image, not the plain one.
    sent = cv2.imdecode(np.frombuffer(views.scene_view.jpeg, np.uint8), cv2.IMREAD_COLOR).astype(int)
    region = inside if mode == "tint" else ring if mode == "contour" else changed
    assert np.abs(sent[region] - drawn[region]).mean() < np.abs(sent[region] - plain[region]).mean()


def test_stage_one_crop_shows_the_context_crop(decoded):
    ann, _, frames, rgb = decoded[0]
    style = HighlightStyle(mode="crop", alpha=0.0)  # marks nothing: the pixels are the frame's
    for m in ann.masklets:
        views = render_views(m, frames, style)
        for view in views.object_views:
            stats = {s.frame: s for s in frame_stats(m)}
            assert view.object_box == stats[view.frame].box
            expected = crop_box(view.object_box, (360, 640), style.context_margin, style.min_crop_px)
            assert view.region == expected
            x0, y0, x1, y1 = view.region
            assert (view.width, view.height) == output_size(x1 - x0, y1 - y0, style.max_side)
            # The crop's pixels are the frame's (JPEG aside).
            sent = cv2.imdecode(np.frombuffer(view.jpeg, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1].astype(int)
            if (view.width, view.height) == (x1 - x0, y1 - y0):
                assert np.abs(sent - rgb[view.frame][y0:y1, x0:x1]).mean() < 6


def test_auto_colour_avoids_the_objects_own_colour():
    m = square_masklet([(40, 20, 100, 80)])
    frame = np.full((100, 160, 3), 128, np.uint8)
    for name in ("red", "green", "blue", "yellow"):
        frame[20:80, 40:100] = PALETTE[name]
        views = render_views(m, {0: frame}, HighlightStyle(), k=1, n_video_frames=1)
        assert views.colour in PALETTE and views.colour != name
    fixed = render_views(m, {0: frame}, HighlightStyle(colour="yellow"), k=1, n_video_frames=1)
    assert fixed.colour == "yellow"


# --------------------------------------------------------------------------- planning and decoding


def test_plan_union_is_what_is_decoded_and_suffices(decoded):
    for ann, plan, frames, rgb in decoded:
        assert plan.frames == tuple(sorted(set().union(*(o.frames for o in plan.objects))))
        assert set(frames) == set(rgb) == set(plan.frames)
        assert set(plan.frames) <= set(ann.video.annotated_frames)
        views = render_video(ann, frames)  # raises if any view needs an undecoded frame
        for o, v in zip(plan.objects, views):
            assert set(v.frames_used) <= set(o.frames)
            assert o.video_frames == tuple(x.frame for x in v.video_views)
        assert build_video_views(ann) == views


def test_decoded_frames_match_the_reference_reader(decoded):
    ann, plan, frames, rgb = decoded[0]
    reference = read_frames(ann.video.path, list(plan.frames))
    for i, ref in zip(plan.frames, reference):
        assert rgb[i].shape == ref.shape == (360, 640, 3)
        assert np.array_equal(rgb[i], ref)  # one decoder: the dict and the stack hold the same pixels
        assert isinstance(frames[i], YuvFrame)
        # The renderer converts YUV with OpenCV, whole frame or any part of it alike.
        shown = frame_view_bgr(frames[i])[:, :, ::-1]
        i420 = np.concatenate([p.ravel() for p in frames[i].planes()]).reshape(-1, 640)
        assert np.array_equal(shown, cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420))
        assert np.abs(shown.astype(int) - ref).mean() < 1.5  # same matrix as FFmpeg's, chroma upsampling differs


def test_skipping_unwanted_frames_never_drops_a_reference(tmp_path):
    # P-frames here may reference B-frames (ref=4, B-pyramid): only frames nobody
    # references may be skipped, or the wanted frames come out corrupt.
    import av
    from fractions import Fraction

    path = tmp_path / "refs.mp4"
    texture = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 192, 112, "yuv420p"
        stream.options = {"crf": "18", "x264-params": "ref=4:bframes=3:b-pyramid=normal:b-adapt=0"}
        for t in range(48):
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(texture[2 * t % 80 :][:112, 3 * t % 100 :][:, :192]), format="rgb24"
            )
            frame.pts, frame.time_base = t, Fraction(1, 24)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    wanted = list(range(0, 48, 4))
    got = decode_frames(path, wanted)
    everything = read_frames(path)  # every frame wanted: nothing skipped
    for i, ref in zip(wanted, everything[wanted]):
        assert np.abs(got[i].astype(int) - ref).max() <= 16, i


def test_sequential_fallback_counts_frames_like_the_timestamp_path(decoded):
    import av

    ann, plan, _, rgb = decoded[0]
    with av.open(ann.video.path) as container:
        container.streams.video[0].codec_context.thread_count = 1
        frames = media._decode_sequential(container, set(plan.frames), media._to_rgb)
    assert set(frames) == set(plan.frames)
    assert all(np.array_equal(frames[i], rgb[i]) for i in plan.frames)


def test_object_never_visible_is_reported_not_rendered(sample):
    ann = sample[0]
    n = len(ann.masklets[0].rles)
    ghost = Masklet.from_rles(ann.video.video_id, 99, ann.masklets[0].frame_indices, [rle_ops.empty(360, 640)] * n)
    ann = dataclasses.replace(ann, masklets=[*ann.masklets, ghost])
    plan = plan_video(ann)
    assert plan.objects[-1] == ObjectPlan(99, False, (), ())
    assert select_object_frames(ghost, {}, 3) == [] and uniform_visible_frames(ghost) == []
    assert scene_frame(ghost, {}) is None
    views = build_video_views(ann)
    assert views[-1] == NotVisible(ann.video.video_id, 99, "not visible in any annotated frame")
    assert all(isinstance(v, ObjectViews) for v in views[:-1])


def test_unreadable_videos_raise_schema_errors_naming_the_file(sample, tmp_path):
    ann = sample[0]
    missing = tmp_path / "missing.mp4"
    with pytest.raises(SchemaError, match="missing.mp4: video file not found"):
        decode_frames(missing, [0])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    with pytest.raises(SchemaError) as err:
        build_video_views(dataclasses.replace(ann, video=dataclasses.replace(ann.video, path=str(garbage))))
    assert "garbage.mp4" in str(err.value) and "\n" not in str(err.value)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(Path(ann.video.path).read_bytes()[:3000])
    with pytest.raises(SchemaError, match="truncated.mp4"):
        decode_frames(truncated, [0, 4])
    with pytest.raises(SchemaError, match="frame 400 could not be decoded: the video has 28 frames"):
        decode_frames(ann.video.path, [0, 400])


def test_frames_of_the_wrong_size_are_a_schema_error(sample):
    m = sample[0].masklets[0]
    f = select_object_frames(m, {}, 1)[0]
    with pytest.raises(SchemaError, match="field 'video_height'"):
        render_views(m, {f: np.zeros((100, 100, 3), np.uint8)}, k=1, n_video_frames=1)


def test_benchmark_quick_run(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "perf" / "bench_annotate_overhead.py"), "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    assert figures["workload"]["objects"] > 0
    assert set(figures["cpu_ms_per_object_median"]) == {"decode", "select", "crop", "highlight", "encode"}
    assert figures["total_cpu_ms_per_object"] > 0 and "target <=" in proc.stdout
