"""Tests of the synthetic video generator: determinism, mask semantics, facts and text
that agree with the masks, resolutions, and the mp4 writer against three decoders."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import pytest

from refsav.pipelines.synthetic import (
    APPEARANCES,
    DIRECTIONS,
    OCCLUSION_MIN_FRACTION,
    OCCLUSION_MIN_PIXELS,
    SHAPES,
    SyntheticVideo,
    make_video,
    write_mp4,
)

VIDEO_IDS = [f"sav_{i:06d}" for i in range(5)]


@dataclass
class Rendered:
    video: SyntheticVideo
    rgb: np.ndarray  # (T, H, W, 3)
    visible: np.ndarray  # (T, K, H, W)
    amodal: np.ndarray  # (T, K, H, W)


def _render(video: SyntheticVideo) -> Rendered:
    rgb, visible = zip(*video.frames())
    amodal = list(video.masks(amodal=True))
    return Rendered(video, np.stack(rgb), np.stack(visible), np.stack(amodal))


@pytest.fixture(scope="module")
def rendered() -> list[Rendered]:
    return [_render(make_video(video_id, seed=0)) for video_id in VIDEO_IDS]


def _runs_have_gap(present: np.ndarray) -> bool:
    """True when a True, then a False, then a True again occur in order."""
    idx = np.flatnonzero(present)
    return idx.size > 0 and not present[idx[0] : idx[-1] + 1].all()


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_video():
    a = make_video("sav_000042", seed=3)
    b = make_video("sav_000042", seed=3)
    assert a == b  # objects, facts and text
    for (rgb_a, m_a), (rgb_b, m_b) in zip(a.frames([0, 17, 47]), b.frames([0, 17, 47])):
        assert np.array_equal(rgb_a, rgb_b)
        assert np.array_equal(m_a, m_b)


def test_different_seed_or_id_gives_different_video():
    base = make_video("sav_000042", seed=3)
    for other in (make_video("sav_000042", seed=4), make_video("sav_000043", seed=3)):
        assert other.objects != base.objects
        (rgb_a, _), (rgb_b, _) = next(base.frames([0])), next(other.frames([0]))
        assert np.abs(rgb_a.astype(int) - rgb_b.astype(int)).mean() > 5


def test_selected_frames_match_full_render(rendered):
    r = rendered[0]
    for t, (rgb, masks) in zip([4, 8, 47], r.video.frames([4, 8, 47])):
        assert np.array_equal(rgb, r.rgb[t])
        assert np.array_equal(masks, r.visible[t])
    assert np.array_equal(np.stack(list(r.video.masks())), r.visible)
    with pytest.raises(IndexError):
        next(r.video.frames([r.video.num_frames]))


# --------------------------------------------------------------------------- attributes


def test_attributes_are_valid_and_pairs_unique(rendered):
    for r in rendered:
        objects = r.video.objects
        assert [o.object_id for o in objects] == list(range(4))
        assert len({o.depth for o in objects}) == len(objects)
        assert len({(o.appearance, o.shape) for o in objects}) == len(objects)
        for o in objects:
            assert o.shape in SHAPES and o.category == o.shape
            assert o.appearance in APPEARANCES
            assert o.size in ("small", "medium", "large")
            assert o.direction in DIRECTIONS and o.motion.startswith(f"moves {o.direction}")


def test_object_sizes_are_sav_like(rendered):
    for r in rendered:
        frame_area = r.video.width * r.video.height
        amodal_area = r.amodal.sum(axis=(2, 3))  # (T, K)
        assert amodal_area.max() <= 0.105 * frame_area
        for k, obj in enumerate(r.video.objects):
            assert amodal_area[:, k].max() >= 0.6 * obj.area  # fully seen at least once
            assert obj.area >= 300  # a few hundred px^2 at 640x360
        # Size words are ordered by area within a video.
        by_size = {s: [o.area for o in r.video.objects if o.size == s] for s in ("small", "medium", "large")}
        present = [v for v in by_size.values() if v]
        for smaller, larger in zip(present, present[1:]):
            assert max(smaller) < min(larger)


# --------------------------------------------------------------------------- masks


def test_visible_masks_are_disjoint_and_belong_to_the_nearest_object(rendered):
    for r in rendered:
        depths = np.array([o.depth for o in r.video.objects])
        assert r.visible.sum(axis=1).max() <= 1  # modal masks never overlap
        assert not (r.visible & ~r.amodal).any()
        # Wherever silhouettes overlap, the pixel goes to the nearest of them.
        # Paint silhouettes far to near: the last writer of a pixel is its nearest object.
        nearest = np.full(r.amodal.shape[:1] + r.amodal.shape[2:], -1, dtype=np.int8)
        for k in np.argsort(depths):
            nearest[r.amodal[:, k]] = k
        owner = np.full_like(nearest, -1)
        for k in range(len(depths)):
            owner[r.visible[:, k]] = k
        assert np.array_equal(owner, nearest)
        overlapping = r.amodal.sum(axis=1) >= 2
        assert overlapping.any()  # the check above was exercised on real overlaps


def test_frames_are_not_flat_and_change_over_time(rendered):
    for r in rendered:
        for t in (0, r.video.num_frames - 1):
            frame = r.rgb[t]
            assert frame.dtype == np.uint8 and frame.shape == (360, 640, 3)
            assert frame.std() > 25
            assert len(np.unique(frame)) > 100  # a photograph, not a few flat fills
        # Object interiors are textured too, not single colours.
        for k in range(len(r.video.objects)):
            t = int(np.argmax(r.visible[:, k].sum(axis=(1, 2))))
            pixels = r.rgb[t][r.visible[t, k]]
            assert len(np.unique(pixels, axis=0)) > 20
        assert np.abs(r.rgb[0].astype(int) - r.rgb[-1].astype(int)).mean() > 3


# --------------------------------------------------------------------------- facts vs masks


def test_leave_and_reenter_fact_matches_masks(rendered):
    for r in rendered:
        assert any(f.leaves_and_reenters for f in r.video.facts)  # designed, not hoped for
        for k, fact in enumerate(r.video.facts):
            in_frame = r.amodal[:, k].any(axis=(1, 2))
            visible = r.visible[:, k].any(axis=(1, 2))
            assert fact.leaves_and_reenters == _runs_have_gap(in_frame)
            if fact.leaves_and_reenters:
                # The SA-V masklet has empty frames between visible ones.
                assert _runs_have_gap(visible)
            seen = np.flatnonzero(visible)
            assert (fact.first_visible, fact.last_visible) == (seen[0], seen[-1])
            assert fact.visible_frames == seen.size
            assert fact.starts_off_screen == (not in_frame[0])
            assert fact.ends_off_screen == (not in_frame[-1])


def test_occlusion_fact_matches_masks(rendered):
    for r in rendered:
        objects, facts = r.video.objects, r.video.facts
        assert any(f.passes_behind for f in facts)
        for k, fact in enumerate(facts):
            own = r.amodal[:, k].sum(axis=(1, 2))
            threshold = np.maximum(OCCLUSION_MIN_PIXELS, OCCLUSION_MIN_FRACTION * own)
            expected = set()
            for j in range(len(objects)):
                hidden = (r.amodal[:, k] & r.visible[:, j]).sum(axis=(1, 2))
                if j != k and (hidden >= threshold).any():
                    assert objects[j].depth > objects[k].depth
                    expected.add(j)
            assert set(fact.passes_behind) == expected
            for j in fact.passes_behind:
                assert k in facts[j].passes_in_front_of
                # Seen on the visible masks alone: the object loses area to j.
                assert (r.visible[:, k].sum(axis=(1, 2)) < own).any()


def test_motion_words_match_mask_centroids(rendered):
    checked = 0
    for r in rendered:
        h, w = r.video.height, r.video.width
        for k, obj in enumerate(r.video.objects):
            # Centroids of whole (unclipped) silhouettes, before any turn-around.
            frames = []
            for t in range(r.video.num_frames):
                m = r.amodal[t, k]
                if obj.kind == "return" and t > obj.anchor_t:
                    break
                if m.any() and not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()):
                    frames.append(t)
            if len(frames) < 2 or frames[-1] - frames[0] < 3:
                continue
            ys0, xs0 = np.nonzero(r.amodal[frames[0], k])
            ys1, xs1 = np.nonzero(r.amodal[frames[-1], k])
            dx, dy = xs1.mean() - xs0.mean(), ys1.mean() - ys0.mean()
            if math.hypot(dx, dy) < 5:
                continue
            angle = math.degrees(math.atan2(-dy, dx))
            expected = 45.0 * DIRECTIONS.index(obj.direction)
            assert abs((angle - expected + 180) % 360 - 180) < 22.5, (obj.motion, angle)
            checked += 1
    assert checked >= 10


# --------------------------------------------------------------------------- text


def test_text_is_unique_and_states_only_true_facts(rendered):
    for r in rendered:
        objects, facts, texts = r.video.objects, r.video.facts, r.video.texts
        assert len(texts) == len(objects)
        longs = [t.long for t in texts]
        assert len(set(longs)) == len(longs)
        all_short = [s for t in texts for s in t.short]
        assert len(set(all_short)) == len(all_short)  # a short caption never fits two objects
        for obj, fact, text in zip(objects, facts, texts):
            name = f"{obj.appearance} {obj.shape}"
            assert text.long.startswith(f"the {obj.size} {name} that ")
            assert 1 <= len(text.short) <= 3 and text.short[0] == f"the {name}"
            assert ("leaves the frame and comes back" in text.long) == fact.leaves_and_reenters
            assert ("spins" in text.long) == obj.spins
            assert ("passes behind" in text.long) == bool(fact.passes_behind)
            for j in fact.passes_behind:
                assert f"the {objects[j].appearance} {objects[j].shape}" in text.long.split("passes behind", 1)[1]
            if fact.starts_off_screen and not fact.leaves_and_reenters:
                assert "enters the frame" in text.long
            if "passes in front of" in text.long:
                assert fact.passes_in_front_of


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("width,height", [(1280, 720), (1920, 1080), (333, 251)])
def test_other_resolutions(width, height):
    video = make_video("sav_000007", seed=1, width=width, height=height, num_frames=24)
    (rgb, masks), = list(video.frames([12]))
    assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8
    assert masks.shape == (4, height, width) and masks.dtype == bool
    assert rgb.std() > 25
    assert any(f.leaves_and_reenters for f in video.facts)
    assert any(f.passes_behind for f in video.facts)


def test_scene_is_resolution_independent():
    small = make_video("sav_000011", seed=2, width=640, height=360)
    large = make_video("sav_000011", seed=2, width=1280, height=720)
    assert [(o.shape, o.appearance, o.size, o.motion) for o in small.objects] == [
        (o.shape, o.appearance, o.size, o.motion) for o in large.objects
    ]
    assert large.objects[0].area == pytest.approx(4 * small.objects[0].area)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError):
        make_video("v", seed=0, num_objects=0)
    with pytest.raises(ValueError):
        make_video("v", seed=0, num_frames=0)
    with pytest.raises(ValueError):
        make_video("v", seed=0, width=8, height=8)


# --------------------------------------------------------------------------- mp4


def _decode_all(path: str) -> dict[str, np.ndarray]:
    import av
    import cv2
    import decord

    reader = decord.VideoReader(path)
    out = {"decord": reader.get_batch(list(range(len(reader)))).asnumpy()}
    with av.open(path) as container:
        out["pyav"] = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    capture = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    out["opencv"] = np.stack(frames)
    return out


def test_mp4_decodes_with_decord_pyav_and_opencv(tmp_path):
    video = make_video("sav_000003", seed=5, width=320, height=180, num_frames=30)
    rendered = [rgb for rgb, _ in video.frames()]
    path = tmp_path / "sav_000003.mp4"
    assert write_mp4(path, (f for f in rendered), fps=24) == 30
    assert os.listdir(tmp_path) == ["sav_000003.mp4"]  # no temporary file left behind

    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == 24
    for name, decoded in _decode_all(str(path)).items():
        assert decoded.shape == (30, 180, 320, 3), name
        diff = np.abs(decoded.astype(np.int16) - np.stack(rendered).astype(np.int16)).mean()
        assert diff < 10, (name, diff)


def test_mp4_odd_size_raises_and_writes_nothing(tmp_path):
    frame = np.zeros((180, 321, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="even"):
        write_mp4(tmp_path / "odd.mp4", [frame])
    assert os.listdir(tmp_path) == []


def test_mp4_bad_frames_raise(tmp_path):
    with pytest.raises(ValueError):
        write_mp4(tmp_path / "empty.mp4", [])
    with pytest.raises(ValueError):
        write_mp4(tmp_path / "float.mp4", [np.zeros((16, 16, 3), dtype=np.float32)])
    good, other = np.zeros((16, 16, 3), np.uint8), np.zeros((16, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="same size"):
        write_mp4(tmp_path / "mixed.mp4", [good, other])
    assert os.listdir(tmp_path) == []


def test_mp4_write_is_atomic(tmp_path):
    path = tmp_path / "v.mp4"
    path.write_bytes(b"previous")

    def failing():
        yield np.zeros((32, 32, 3), dtype=np.uint8)
        raise RuntimeError("renderer crashed")

    with pytest.raises(RuntimeError):
        write_mp4(path, failing())
    assert path.read_bytes() == b"previous"  # the old file is untouched
    assert os.listdir(tmp_path) == ["v.mp4"]
