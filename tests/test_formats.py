"""SA-V JSON, Ref-SAV JSON and benchmark meta/mask_dict: round trips and bad input."""
import json

import numpy as np
import pytest
from pycocotools import mask as coco

from refsav.schemas import Masklet, SchemaError, Video
from refsav.schemas import rle as rle_ops
from refsav.schemas.refsav_json import RefSavObject, RefSavVideo, read_refsav_json, write_refsav_json
from refsav.schemas.refvos import RefExpression, RefVideo, read_mask_dict, read_meta_expressions, write_mask_dict, write_meta_expressions
from refsav.schemas.sav import SavAnnotation, read_sav_json, write_sav_json


def sav_fixture(rng, num_frames=21, h=18, w=30, ids=(0, 1, 5)):
    n_annot = len(range(0, num_frames, 4))
    masks = {}
    for oid in ids:
        m = rng.random((n_annot, h, w)) < 0.3
        m[rng.random(n_annot) < 0.3] = False  # invisible on some frames
        masks[oid] = m
    frames = list(range(0, num_frames, 4))
    masklets = [Masklet.from_rles("sav_000123", oid, frames, [rle_ops.encode(x) for x in m]) for oid, m in masks.items()]
    ann = SavAnnotation(Video("sav_000123", "sav_000123.mp4", 24.0, num_frames, h, w), masklets, "Outdoor")
    return ann, masks


def test_sav_json_round_trip_is_bit_exact_with_pycocotools(tmp_path):
    ann, masks = sav_fixture(np.random.default_rng(0))
    path = tmp_path / "sav_000123_manual.json"
    write_sav_json(path, ann)
    raw = json.loads(path.read_text())
    # Decoding the file with pycocotools alone gives back the original masks.
    for t, row in enumerate(raw["masklet"]):
        stack = coco.decode([{"size": r["size"], "counts": r["counts"].encode()} for r in row])
        for j, oid in enumerate(raw["masklet_id"]):
            assert np.array_equal(stack[:, :, j].astype(bool), masks[oid][t])
    assert raw["masklet_id"] == [0, 1, 5] and raw["masklet_num"] == 3
    assert raw["video_frame_count"] == 21.0 and len(raw["masklet"]) == 6
    back = read_sav_json(path)
    assert back.masklets == ann.masklets
    assert back.video.path == str(tmp_path / "sav_000123.mp4")
    for m in back.masklets:
        assert np.array_equal(m.masks(), masks[m.object_id])
    # SA-V semantics of the derived statistics.
    for j, m in enumerate(back.masklets):
        visible = masks[m.object_id].any(axis=(1, 2))
        assert raw["masklet_first_appeared_frame"][j] == float(np.argmax(visible))
        assert raw["masklet_size_abs"][j] == pytest.approx(masks[m.object_id][visible].sum((1, 2)).mean())


def write_raw(tmp_path, raw, name="sav_000123_manual.json"):
    path = tmp_path / name
    path.write_text(json.dumps(raw))
    return path


def good_raw(tmp_path):
    ann, _ = sav_fixture(np.random.default_rng(1))
    path = tmp_path / "good_manual.json"
    write_sav_json(path, ann)
    return json.loads(path.read_text())


def one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_sav_json_missing_key_names_file_and_field(tmp_path):
    raw = good_raw(tmp_path)
    del raw["masklet_id"]
    path = write_raw(tmp_path, raw)
    with pytest.raises(SchemaError) as err:
        read_sav_json(path)
    assert one_line(err) == f"{path}: field 'masklet_id': required key is missing"


def test_sav_json_rle_of_wrong_size(tmp_path):
    raw = good_raw(tmp_path)
    raw["masklet"][2][1] = rle_ops.encode(np.zeros((18, 31), bool)).to_json()
    path = write_raw(tmp_path, raw)
    with pytest.raises(SchemaError) as err:
        read_sav_json(path)
    msg = one_line(err)
    assert msg.startswith(str(path)) and "field 'masklet[2][1].size'" in msg and "[18, 31]" in msg


def test_sav_json_duplicated_object_id(tmp_path):
    raw = good_raw(tmp_path)
    raw["masklet_id"] = [0, 1, 1]
    path = write_raw(tmp_path, raw)
    with pytest.raises(SchemaError) as err:
        read_sav_json(path)
    msg = one_line(err)
    assert msg.startswith(str(path)) and "field 'masklet_id'" in msg and "duplicate id 1" in msg


def test_sav_json_frame_count_mismatch(tmp_path):
    raw = good_raw(tmp_path)
    raw["video_frame_count"] = 40.0
    path = write_raw(tmp_path, raw)
    with pytest.raises(SchemaError, match="frame-count mismatch") as err:
        read_sav_json(path)
    assert "field 'masklet'" in one_line(err)


def test_sav_json_not_json(tmp_path):
    path = tmp_path / "x_manual.json"
    path.write_text('{"video_id": ')
    with pytest.raises(SchemaError, match="not valid JSON") as err:
        read_sav_json(path)
    assert one_line(err).startswith(str(path))


def test_refsav_json_round_trip_and_errors(tmp_path):
    videos = [
        RefSavVideo("sav_000002", "sav_train/sav_000/sav_000002.mp4", "sav_train/sav_000/sav_000002_manual.json",
                    [RefSavObject(0, "a red car", ["red car"]), RefSavObject(3, "the dog", ["dog", "brown dog"])]),
    ]
    path = tmp_path / "Ref-SAV.json"
    write_refsav_json(path, videos)
    raw = json.loads(path.read_text())
    assert raw["sav_000002"]["objects"]["3"] == {"formated": "the dog", "short_caps": ["dog", "brown dog"]}
    assert read_refsav_json(path) == videos
    del raw["sav_000002"]["objects"]["3"]["formated"]
    path.write_text(json.dumps(raw))
    with pytest.raises(SchemaError) as err:
        read_refsav_json(path)
    assert one_line(err) == f"{path}: record sav_000002: field 'objects.3.formated': required key is missing"


def test_benchmark_meta_and_mask_dict_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    masks = {"12": [rle_ops.encode(rng.random((6, 8)) < 0.5), None], "13": [None, rle_ops.encode(np.ones((6, 8)))]}
    videos = [RefVideo("v01", ["00000", "00004"], [RefExpression("0", "the dog", [0], [12], 0),
                                                   RefExpression("1", "two dogs", [0, 1], [12, 13], 1)], 6, 8)]
    write_meta_expressions(tmp_path / "meta_expressions_valid.json", videos)
    write_mask_dict(tmp_path / "mask_dict.json", masks)
    assert read_meta_expressions(tmp_path / "meta_expressions_valid.json") == videos
    assert read_mask_dict(tmp_path / "mask_dict.json") == masks
    raw = json.loads((tmp_path / "mask_dict.json").read_text())
    raw["13"][1]["counts"] = raw["13"][1]["counts"] + "1"
    (tmp_path / "mask_dict.json").write_text(json.dumps(raw))
    with pytest.raises(SchemaError) as err:
        read_mask_dict(tmp_path / "mask_dict.json")
    assert "record 13: field '[1].counts'" in one_line(err)
