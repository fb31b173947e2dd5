"""RefCOCO / RefCOCO+ / RefCOCOg / gRefCOCO scoring on a tiny hand-made dataset.

Expected masks and numbers are computed here with numpy from the box coordinates,
not with the scorer: pycocotools fills an integer rectangle polygon
[x0,y0, x1,y0, x1,y1, x0,y1] as rows y0..y1-1, columns x0..x1-1 (checked below).
"""
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from refsav.benchmark.refcoco import IMAGE_PROTOCOLS, load_image_predictions, score_refcoco
from refsav.schemas.errors import SchemaError
from refsav.schemas.io import write_parquet
from refsav.schemas.predictions import ImagePrediction
from refsav.schemas.protocols import get_protocol
from refsav.schemas.refer import load_ground_truth, load_refs_pickle
from refsav.schemas.rle import Rle, encode

SIZES = {1: (30, 40), 2: (24, 32), 3: (16, 20)}  # image_id -> (H, W)
PR_KEYS = ["Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9"]


def rect(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def box(image_id, x0, y0, x1, y1):
    m = np.zeros(SIZES[image_id], dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def crowd_rle(image_id, x0, y0, x1, y1):
    """Uncompressed COCO RLE (column-major runs), as COCO stores crowd regions."""
    flat = box(image_id, x0, y0, x1, y1).flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    runs = np.diff(np.concatenate([[0], edges])).tolist()
    return {"size": list(SIZES[image_id]), "counts": runs}


ODD_POLY = [12, 2, 30, 2, 30, 20, 12]  # 7 numbers: pycocotools draws a triangle, ReLA drops it

ANNOTATIONS = [
    {"id": 101, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [rect(2, 3, 10, 9)]},
    # two overlapping polygons: refer sums them (value 2 in the overlap), still foreground
    {"id": 102, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [rect(20, 5, 30, 15), rect(25, 10, 35, 20)]},
    {"id": 103, "image_id": 1, "category_id": 1, "iscrowd": 1, "segmentation": crowd_rle(1, 0, 20, 5, 25)},
    {"id": 201, "image_id": 2, "category_id": 2, "iscrowd": 0, "segmentation": [rect(0, 0, 8, 8)]},
    {"id": 202, "image_id": 2, "category_id": 2, "iscrowd": 0, "segmentation": [rect(0, 12, 6, 20), ODD_POLY]},
    {"id": 203, "image_id": 2, "category_id": 2, "iscrowd": 0, "segmentation": []},
    {"id": 301, "image_id": 3, "category_id": 3, "iscrowd": 0, "segmentation": [rect(4, 4, 12, 10)]},
]

GT_REFCOCO = {  # sample id -> expected GT mask of the val split
    "11": box(1, 2, 3, 10, 9),
    "12": box(1, 2, 3, 10, 9),
    "13": box(1, 20, 5, 30, 15) | box(1, 25, 10, 35, 20),
    "21": box(2, 0, 0, 8, 8),
    "22": np.zeros(SIZES[2], dtype=bool),  # annotation without segmentation (LISA: empty)
}
GT_GREFCOCO = {
    "11": box(1, 2, 3, 10, 9) | box(1, 20, 5, 30, 15) | box(1, 25, 10, 35, 20),  # crowd 103 skipped
    "12": box(1, 2, 3, 10, 9) | box(1, 20, 5, 30, 15) | box(1, 25, 10, 35, 20),
    "13": np.zeros(SIZES[1], dtype=bool),  # no target
    "21": box(2, 0, 12, 6, 20),  # odd-length polygon dropped
    "31": np.zeros(SIZES[3], dtype=bool),  # no target
}
IMAGE_OF = {"11": 1, "12": 1, "13": 1, "21": 2, "22": 2, "31": 3}


def sentence(sid, text):
    return {"sent_id": sid, "sent": text, "raw": text.capitalize() + ".", "tokens": text.split()}


def ref(ref_id, ann_id, image_id, cat, split, sents, file_name_suffix=0):
    return {
        "ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "category_id": cat, "split": split,
        "sent_ids": [s["sent_id"] for s in sents], "sentences": sents,
        "file_name": f"COCO_train2014_{image_id:012d}_{file_name_suffix}.jpg",
    }


REFCOCO_REFS = [
    ref(1, 101, 1, 1, "val", [sentence(11, "man on left"), sentence(12, "left guy")]),
    ref(2, 102, 1, 1, "val", [sentence(13, "man on right")]),
    ref(3, 201, 2, 2, "val", [sentence(21, "top left dog")]),
    ref(4, 203, 2, 2, "val", [sentence(22, "the shadow")]),
    ref(5, 301, 3, 3, "testA", [sentence(31, "cat")]),
]
GREFCOCO_REFS = [
    ref(1, [101, 102, 103], 1, [1], "val", [sentence(11, "all people"), sentence(12, "everyone")]),
    ref(2, [-1], 1, [1], "val", [sentence(13, "the giraffe")]),
    ref(3, [202], 2, [2], "val", [sentence(21, "bottom dog")]),
    ref(4, [-1], 3, [3], "val", [sentence(31, "the horse")]),
    ref(5, [201], 2, [2], "testA", [sentence(41, "top dog")]),
]


def instances():
    return {
        "images": [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "height": h, "width": w} for i, (h, w) in SIZES.items()],
        "annotations": ANNOTATIONS,
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "cat"}],
    }


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("refer")
    for name in ("refcoco", "grefcoco"):
        (root / name).mkdir()
        (root / name / "instances.json").write_text(json.dumps(instances()))
    with open(root / "refcoco" / "refs(unc).p", "wb") as fh:
        pickle.dump(REFCOCO_REFS, fh, protocol=2)
    (root / "grefcoco" / "grefs(unc).json").write_text(json.dumps(GREFCOCO_REFS))
    return root


def write_json_preds(path: Path, masks: dict[str, np.ndarray], extra: dict[str, dict] | None = None, jsonl=False):
    rows = []
    for sid, m in masks.items():
        row = {"sent_id": int(sid), "rle": encode(m).to_json()} if int(sid) % 2 else {"sample_id": sid, "rle": encode(m).to_json()}
        row.update((extra or {}).get(sid, {}))
        rows.append(row)
    path.write_text("\n".join(json.dumps(r) for r in rows) if jsonl else json.dumps(rows))
    return path


def counts(pred, gt):
    inter = int(np.count_nonzero(pred & gt))
    return inter, int(np.count_nonzero(pred | gt))


# ------------------------------------------------------------------------------ ground truth


def test_pycocotools_rectangle_convention_and_gt_masks(data_root):
    # The convention the expected masks rely on.
    dec = coco_mask.decode(coco_mask.frPyObjects([rect(2, 3, 10, 9)], 30, 40))[:, :, 0]
    assert np.array_equal(dec.astype(bool), box(1, 2, 3, 10, 9))
    # The dropped odd polygon would have added pixels, so the filter is observable.
    odd = coco_mask.decode(coco_mask.frPyObjects([ODD_POLY], 24, 32))[:, :, 0]
    assert odd.sum() > 0

    gt = load_ground_truth(data_root, "refcoco", "val")
    assert [s.sample_id for s in gt.samples] == list(GT_REFCOCO)
    for s in gt.samples:
        assert (s.height, s.width) == SIZES[s.image_id] and s.image_id == IMAGE_OF[s.sample_id]
        assert np.array_equal(gt.mask(s), GT_REFCOCO[s.sample_id]), s.sample_id
    assert gt.samples[0].sent == "man on left" and not gt.samples[0].no_target

    ggt = load_ground_truth(data_root, "grefcoco", "val")
    assert [s.sample_id for s in ggt.samples] == list(GT_GREFCOCO)
    assert [s.no_target for s in ggt.samples] == [False, False, True, False, True]
    for s in ggt.samples:
        assert np.array_equal(ggt.mask(s), GT_GREFCOCO[s.sample_id]), s.sample_id
    assert not ggt.mask(ggt.samples[0])[20:25, 0:5].any()  # crowd region left out


def test_refcoco_folder_can_be_given_directly_and_bad_split_is_named(data_root):
    gt = load_ground_truth(data_root / "refcoco", "refcoco", "testA")
    assert [s.sample_id for s in gt.samples] == ["31"]
    with pytest.raises(SchemaError, match=r"split 'testB'.*\['testA', 'val'\]"):
        load_ground_truth(data_root, "refcoco", "testB")


def test_gt_reference_errors_are_one_line(tmp_path):
    (tmp_path / "refcoco").mkdir()
    (tmp_path / "refcoco" / "instances.json").write_text(json.dumps(instances()))
    bad = [ref(9, 999, 1, 1, "val", [sentence(90, "nobody")])]
    (tmp_path / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(SchemaError) as err:
        load_ground_truth(tmp_path, "refcoco", "val")
    msg = str(err.value)
    assert "refs(unc).p" in msg and "ref 9" in msg and "ann_id" in msg and "999" in msg and "\n" not in msg


# ------------------------------------------------------------------------- safe unpickling


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps([{"ref_id": 1, "evil": _Exploit(marker)}], protocol=2)
    with pytest.raises(SchemaError) as err:
        load_refs_pickle(payload, tmp_path / "refs(unc).p")
    msg = str(err.value)
    assert "refs(unc).p" in msg and "system" in msg and "global" in msg
    assert not marker.exists()
    # Sanity: the payload really is live, so the refusal above is what protected us.
    pickle.loads(payload)
    assert marker.exists()


def test_malicious_refs_file_stops_scoring(tmp_path, data_root):
    marker = tmp_path / "pwned"
    (tmp_path / "refcoco").mkdir()
    (tmp_path / "refcoco" / "instances.json").write_text(json.dumps(instances()))
    (tmp_path / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(_Exploit(marker), protocol=2))
    preds = write_json_preds(tmp_path / "p.json", GT_REFCOCO)
    with pytest.raises(SchemaError, match="global"):
        score_refcoco(tmp_path, preds, "refcoco")
    assert not marker.exists()


def test_other_globals_and_garbage_are_refused(tmp_path):
    with pytest.raises(SchemaError, match=r"(__builtin__|builtins)\.set"):
        load_refs_pickle(pickle.dumps([{1, 2}], protocol=2), "x.p")
    with pytest.raises(SchemaError, match="not a readable pickle"):
        load_refs_pickle(b"\x80\x02]q\x00(K\x01", "x.p")  # truncated


def _py2_pickle(value) -> bytes:
    """Protocol-2 pickle the way Python 2 writes str: SHORT_BINSTRING bytes, no unicode."""
    out = bytearray(b"\x80\x02")

    def emit(v):
        if isinstance(v, dict):
            out.extend(b"}")
            for k, x in v.items():
                emit(k)
                emit(x)
                out.extend(b"s")
        elif isinstance(v, list):
            out.extend(b"]")
            for x in v:
                emit(x)
                out.extend(b"a")
        elif isinstance(v, str):
            raw = v.encode("latin1")
            out.extend(b"U" + bytes([len(raw)]) + raw)
        elif isinstance(v, int):
            out.extend(b"J" + struct.pack("<i", v))
        else:
            raise TypeError(v)

    emit(value)
    out.extend(b".")
    return bytes(out)


def test_python2_byte_strings_load_as_latin1_text():
    refs = [{"ref_id": 7, "split": "val", "sentences": [{"sent_id": 21, "sent": "caf\xe9 table"}]}]
    assert load_refs_pickle(_py2_pickle(refs), "refs(unc).p") == refs


# ------------------------------------------------------------------------------- refcoco*


def test_refcoco_perfect_predictions_score_100(data_root, tmp_path):
    preds = write_json_preds(tmp_path / "perfect.json", GT_REFCOCO)
    report = score_refcoco(data_root, preds, "refcoco", split="val")
    assert report.primary_metric == "cIoU" and report.item_kind == "samples" and report.protocol == "refcoco"
    assert report.totals["cIoU"] == report.totals["gIoU"] == 100.0
    assert all(report.totals[k] == 100.0 for k in PR_KEYS)
    assert report.issues == []
    assert [i.sample_id for i in report.items] == list(GT_REFCOCO)
    assert [i.ref_id for i in report.items] == [1, 1, 2, 3, 4]

    # LISA's epsilons put a perfect non-empty mask just below 1.
    lisa = score_refcoco(data_root, preds, "refcoco", lisa_eps=True)
    assert 99.999 < lisa.totals["gIoU"] < 100.0
    assert lisa.totals["cIoU"] == pytest.approx(100.0, abs=1e-9)


def test_refcoco_empty_predictions_and_empty_union_convention(data_root, tmp_path):
    preds = write_json_preds(tmp_path / "empty.json", {sid: np.zeros_like(m) for sid, m in GT_REFCOCO.items()})
    one = score_refcoco(data_root, preds, "refcoco", empty_union="one")
    zero = score_refcoco(data_root, preds, "refcoco", empty_union="zero")
    assert one.totals["cIoU"] == zero.totals["cIoU"] == 0.0
    # Sample 22 has an empty GT: both empty -> 1 (LISA) or 0 (LAVT); 1 of 5 samples.
    assert one.totals["gIoU"] == pytest.approx(20.0)
    assert zero.totals["gIoU"] == 0.0
    assert all(one.totals[k] == pytest.approx(20.0) for k in PR_KEYS)
    assert all(zero.totals[k] == 0.0 for k in PR_KEYS)
    assert {i.sample_id: i.iou for i in one.items}["22"] == 1.0
    assert {i.sample_id: i.iou for i in zero.items}["22"] == 0.0


def test_refcoco_hand_computed_example(data_root, tmp_path):
    preds = {
        "11": box(1, 4, 3, 12, 9),  # shifted right by 2: I = 6*6, U = 6*10
        "12": box(1, 2, 3, 10, 9) | box(1, 30, 20, 40, 30),  # GT plus a false blob
        "21": box(2, 0, 0, 4, 8),  # half of the GT
        "22": box(2, 20, 20, 22, 22),  # something where the GT is empty
    }  # "13" missing: scored as an empty mask
    path = write_json_preds(tmp_path / "hand.json", preds)
    report = score_refcoco(data_root, path, "refcoco")

    expected = {}
    for sid, gt in GT_REFCOCO.items():
        expected[sid] = counts(preds.get(sid, np.zeros_like(gt)), gt)
    assert expected["11"] == (36, 60) and expected["21"] == (32, 64)  # the boxes are what we think
    inter = np.array([expected[s][0] for s in GT_REFCOCO], dtype=float)
    union = np.array([expected[s][1] for s in GT_REFCOCO], dtype=float)
    ious = inter / union  # no empty union here
    assert report.totals["cIoU"] == pytest.approx(100 * inter.sum() / union.sum())
    assert report.totals["gIoU"] == pytest.approx(100 * ious.mean())
    for k, key in zip((0.5, 0.6, 0.7, 0.8, 0.9), PR_KEYS):
        assert report.totals[key] == pytest.approx(100 * np.mean(ious >= k))
    # hand check of one value: IoUs 0.6, 48/148, 0, 0.5, 0
    assert report.totals["Pr@0.5"] == pytest.approx(40.0)
    by_id = {i.sample_id: i for i in report.items}
    assert (by_id["11"].intersection, by_id["11"].union, by_id["11"].iou) == (36, 60, pytest.approx(0.6))
    assert by_id["13"].missing and by_id["13"].pred_area == 0 and by_id["13"].gt_area == int(GT_REFCOCO["13"].sum())
    assert [(i.kind, i.where) for i in report.issues] == [("missing_sample", "13")]


def test_submission_problems_become_issues(data_root, tmp_path):
    rows = [
        {"sample_id": "11", "rle": encode(GT_REFCOCO["11"]).to_json()},
        {"sample_id": "11", "rle": encode(np.zeros((30, 40), bool)).to_json()},  # duplicate
        {"sample_id": "12", "rle": encode(np.ones((10, 10), bool)).to_json()},  # wrong size
        {"sample_id": "13", "rle": {"size": [30, 40], "counts": "!!!garbage"}},  # corrupt
        {"sample_id": "21", "rle": {"size": [24, 32], "counts": "5"}},  # runs do not cover H*W
        {"sample_id": "999", "rle": encode(np.zeros((5, 5), bool)).to_json()},  # unknown sentence
        {"sent_id": 31, "rle": encode(np.zeros((16, 20), bool)).to_json()},  # testA sentence
        {"rle": encode(np.zeros((5, 5), bool)).to_json()},  # no id
        {"sample_id": "22", "image_id": 3, "rle": encode(np.zeros((24, 32), bool)).to_json()},  # wrong image
    ]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(rows))
    report = score_refcoco(data_root, path, "refcoco")
    kinds = sorted((i.kind, i.where) for i in report.issues)
    assert ("duplicate", "11") in kinds
    assert ("wrong_size", "12") in kinds
    assert ("corrupt_mask", "13") in kinds and ("corrupt_mask", "21") in kinds
    assert ("extra_sample", "999") in kinds and ("extra_sample", "split testA") in kinds
    assert ("image_mismatch", "22") in kinds
    assert any(k == "bad_record" for k, _ in kinds)
    assert not any(k == "missing_sample" for k, _ in kinds)  # all five were submitted
    by_id = {i.sample_id: i for i in report.items}
    assert by_id["11"].iou == 1.0 and not by_id["11"].missing  # the first of the duplicates
    for sid in ("12", "13", "21"):  # unusable masks are scored as empty
        assert by_id[sid].missing and by_id[sid].intersection == 0 and by_id[sid].pred_area == 0
    assert all("\n" not in str(i) for i in report.issues)


def test_unreadable_submission_is_a_schema_error(data_root, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(SchemaError, match="broken.json"):
        score_refcoco(data_root, path, "refcoco")
    path.write_text(json.dumps({"11": {}}))
    with pytest.raises(SchemaError, match="JSON list"):
        score_refcoco(data_root, path, "refcoco")


def test_parquet_jsonl_and_zip_inputs_agree(data_root, tmp_path):
    preds = {"11": box(1, 4, 3, 12, 9), "12": GT_REFCOCO["12"], "13": box(1, 20, 5, 26, 15), "21": box(2, 0, 0, 4, 8), "22": GT_REFCOCO["22"]}
    json_path = write_json_preds(tmp_path / "p.json", preds)
    jsonl_path = write_json_preds(tmp_path / "p.jsonl", preds, jsonl=True)
    records = [ImagePrediction(sid, str(IMAGE_OF[sid]), encode(m)) for sid, m in preds.items()]
    pq_path = tmp_path / "p.parquet"
    write_parquet(pq_path, records, ImagePrediction)
    zip_path = tmp_path / "sub.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.write(jsonl_path, "sub/predictions.jsonl")
        zf.writestr("../evil.json", "[]")
    zip_pq = tmp_path / "subpq.zip"
    with zipfile.ZipFile(zip_pq, "w") as zf:
        zf.write(pq_path, "predictions.parquet")

    reports = {p.name: score_refcoco(data_root, p, "refcoco") for p in (json_path, jsonl_path, pq_path, zip_path, zip_pq)}
    ref_totals = reports["p.json"].totals
    assert 0 < ref_totals["cIoU"] < 100
    for name, rep in reports.items():
        assert rep.totals == ref_totals, name
    assert [(i.kind, i.where) for i in reports["sub.zip"].issues] == [("unsafe_entry", "../evil.json")]
    assert reports["p.parquet"].issues == [] and reports["subpq.zip"].issues == []
    assert load_image_predictions(zip_pq).source == "parquet"


def test_parquet_with_a_corrupt_mask_is_reported_not_raised(data_root, tmp_path):
    records = [ImagePrediction(sid, str(IMAGE_OF[sid]), encode(m)) for sid, m in GT_REFCOCO.items() if sid != "13"]
    records.append(ImagePrediction("13", "1", Rle((30, 40), "!!")))
    path = tmp_path / "c.parquet"
    write_parquet(path, records, ImagePrediction)
    report = score_refcoco(data_root, path, "refcoco")
    assert [(i.kind, i.where) for i in report.issues] == [("corrupt_mask", "13")]
    assert {i.sample_id: i.missing for i in report.items}["13"] is True


# ------------------------------------------------------------------------------- gRefCOCO


def test_grefcoco_perfect_and_empty(data_root, tmp_path):
    perfect = score_refcoco(data_root, write_json_preds(tmp_path / "p.json", GT_GREFCOCO), "grefcoco")
    assert perfect.primary_metric == "gIoU"
    t = perfect.totals
    assert t["gIoU"] == t["cIoU"] == t["N-acc"] == t["T-acc"] == 100.0
    assert all(t[k] == 100.0 for k in PR_KEYS)
    assert perfect.issues == []

    empty = score_refcoco(data_root, write_json_preds(tmp_path / "e.json", {s: np.zeros_like(m) for s, m in GT_GREFCOCO.items()}), "grefcoco")
    t = empty.totals
    # Empty mask = "no target": both no-target sentences (13, 31) are right, the 3 targeted wrong.
    assert t["N-acc"] == 100.0 and t["T-acc"] == 0.0
    assert t["gIoU"] == pytest.approx(100 * 2 / 5)
    assert t["cIoU"] == 0.0 and all(t[k] == 0.0 for k in PR_KEYS)
    assert [i.pred_no_target for i in empty.items] == [True] * 5
    assert [i.gt_no_target for i in empty.items] == [False, False, True, False, True]


def test_grefcoco_hand_computed_example(data_root, tmp_path):
    g = GT_GREFCOCO
    preds = {
        "11": box(1, 2, 3, 10, 9),  # one of the targets only
        "12": g["12"],  # perfect mask but flagged no-target -> false positive, I := 0
        "13": box(1, 0, 0, 4, 4),  # mask on a no-target sentence -> false negative
        "21": box(2, 0, 12, 6, 16),  # half of the target
        "31": np.zeros(SIZES[3], dtype=bool),  # correctly empty
    }
    path = write_json_preds(tmp_path / "g.json", preds, extra={"12": {"no_target": True}})
    report = score_refcoco(data_root, path, "grefcoco")

    i11, u11 = counts(preds["11"], g["11"])
    _, u12 = counts(preds["12"], g["12"])
    _, u13 = counts(preds["13"], g["13"])
    i21, u21 = counts(preds["21"], g["21"])
    assert (i11, u11) == (48, 48 + 100 + 100 - 25) and (i21, u21) == (24, 48) and u13 == 16
    # ReLA: targeted -> add I (0 when flagged no-target) and U; no-target FN adds U; TP adds nothing.
    sum_i = i11 + 0 + i21
    sum_u = u11 + u12 + u13 + u21
    ious = [i11 / u11, 0.0, 0.0, i21 / u21, 1.0]
    targeted = [i11 / u11, 0.0, i21 / u21]
    assert report.totals["cIoU"] == pytest.approx(100 * sum_i / sum_u)
    assert report.totals["gIoU"] == pytest.approx(100 * sum(ious) / 5)
    assert report.totals["N-acc"] == pytest.approx(50.0)  # 31 right, 13 wrong
    assert report.totals["T-acc"] == pytest.approx(100 * 2 / 3)  # 11, 21 right, 12 flagged
    for k, key in zip((0.5, 0.6, 0.7, 0.8, 0.9), PR_KEYS):
        assert report.totals[key] == pytest.approx(100 * np.mean(np.array(targeted) >= k))
    items = report.items
    assert sum(i.intersection for i in items) == sum_i and sum(i.union for i in items) == sum_u
    assert [i.iou for i in items] == pytest.approx(ious)
    assert report.issues == []


def test_grefcoco_pickle_fallback_and_conventions(data_root, tmp_path):
    (tmp_path / "grefcoco").mkdir()
    (tmp_path / "grefcoco" / "instances.json").write_text(json.dumps(instances()))
    (tmp_path / "grefcoco" / "grefs(unc).p").write_bytes(pickle.dumps(GREFCOCO_REFS, protocol=2))
    preds = write_json_preds(tmp_path / "p.json", {"11": box(1, 2, 3, 10, 9), "13": GT_GREFCOCO["13"]})
    a = score_refcoco(tmp_path, preds, "grefcoco")
    b = score_refcoco(data_root, preds, "grefcoco")
    assert a.totals == b.totals
    assert sorted(i.where for i in a.issues if i.kind == "missing_sample") == ["12", "21", "31"]
    with pytest.raises(ValueError, match="grefcoco"):
        score_refcoco(data_root, preds, "grefcoco", empty_union="zero")


def test_protocol_table():
    assert set(IMAGE_PROTOCOLS) == {"refcoco", "refcoco+", "refcocog", "grefcoco"}
    assert get_protocol("refcocog").refer.refs_names() == ["refs(umd).p"]
    assert get_protocol("refcoco+").refer.refs_names() == ["refs(unc).p"]
    assert get_protocol("grefcoco").refer.refs_names()[0] == "grefs(unc).json"
    for p in IMAGE_PROTOCOLS.values():
        assert p.source and p.description and get_protocol(p.name).primary_metric in p.metrics


def test_on_sample_progress(data_root, tmp_path):
    seen = []
    score_refcoco(data_root, write_json_preds(tmp_path / "p.json", GT_REFCOCO), "refcoco", on_sample=seen.append)
    assert sum(seen) == len(GT_REFCOCO)
