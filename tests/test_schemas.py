"""Records ⇄ Parquet ⇄ `datasets`, RLE checks and the JSON Schema export."""
import dataclasses
import json

import jsonschema
import numpy as np
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as coco

from refsav.schemas import (
    Confusable,
    Consistency,
    Expression,
    FileHash,
    GrounderIdentity,
    Grounding,
    GroundingScore,
    ImagePrediction,
    LeaderboardEntry,
    Masklet,
    PromptRef,
    Provenance,
    QAPrediction,
    SchemaError,
    ScoreRecord,
    Video,
    VideoPrediction,
)
from refsav.schemas import rle as rle_ops
from refsav.schemas.io import read_parquet, write_parquet
from refsav.schemas.rle import Rle
from refsav.schemas.submission import submission_schemas


def random_masks(rng, n, h, w):
    masks = np.zeros((n, h, w), bool)
    for t in range(n):
        if rng.random() < 0.2:
            continue  # invisible on this frame
        y, x = rng.integers(0, h), rng.integers(0, w)
        masks[t, max(0, y - 5) : y + 6, max(0, x - 7) : x + 8] = True
        masks[t] ^= rng.random((h, w)) < 0.02
    return masks


def make_records(rng):
    h, w = 24, 40
    masks = random_masks(rng, 6, h, w)
    rles = [rle_ops.encode(m) for m in masks]
    prov = Provenance(
        model_id="tiny-vlm",
        model_revision="abc123",
        backend="openai",
        prompts=[PromptRef("object/v1", "0" * 64), PromptRef("scene/v1", "1" * 64)],
        generation_config=json.dumps({"temperature": 0.0, "max_tokens": 64}),
        created_at="2026-11-21T00:00:00Z",
        toolkit_version="0.1.0",
        input_files=[FileHash("sav_000001.mp4", "2" * 64)],
    )
    return {
        Video: [Video("v1", "v1.mp4", 24.0, 21, h, w), Video("v2", "v2.mp4", 30.0, 8, h, w, 1)],
        Masklet: [Masklet.from_rles("v1", 3, list(range(0, 24, 4)), rles)],
        Expression: [
            Expression(
                "v1", 3, "the red ball that rolls left", ["the red ball", "red ball"], "a red ball", "on the left",
                "it rolls left", Consistency(True, 1, "matches"), prov, ambiguous=True, ambiguous_with=[4],
            ),
            Expression(  # grounded: one short expression removed, one confusable object
                "v1", 4, "the blue cup on the table", ["the cup"], "a blue cup", "on the table", "it stays",
                Consistency(True, 1, "matches"),
                dataclasses.replace(prov, grounder=GrounderIdentity("ckpt/", "3" * 64, "in-process", "official", "{}")),
                grounding=Grounding(
                    [0, 4, 8],
                    [GroundingScore("the blue cup on the table", "long", 0.8125, 0.75, 0.875, True, 3, 0.5),
                     GroundingScore("the cup", "short", 0.625, 0.5, 0.75, True, None, None),
                     GroundingScore("a cup", "short", 0.25, 0.25, 0.25, False, 3, 0.375)],
                    [Confusable(3, 0.5)],
                ),
            ),
        ],
        VideoPrediction: [VideoPrediction("v1", "0", [f"{i:05d}" for i in range(6)], rles, "Sure, [SEG].")],
        ImagePrediction: [ImagePrediction("s1", "img1", rles[0], no_target=None), ImagePrediction("s2", "img1", rles[1], True)],
        QAPrediction: [QAPrediction("q1", "The answer is B.")],
        ScoreRecord: [ScoreRecord("refsav", "v1/0", "long", {"J": 50.0, "F": 61.25})],
        LeaderboardEntry: [
            LeaderboardEntry("ref-sav", "refsav", "model-a", {"J&F": 55.5, "J": 50.0}, "J&F", "f" * 64, "0.1.0",
                             "2026-11-21T00:00:00Z", {"model": "tiny"})
        ],
    }


@pytest.mark.parametrize("cls", [Video, Masklet, Expression, VideoPrediction, ImagePrediction, QAPrediction, ScoreRecord, LeaderboardEntry])
def test_arrow_schema_matches_dataclass(cls):
    assert [f.name for f in cls.ARROW_SCHEMA] == [f.name for f in dataclasses.fields(cls)]


def test_records_round_trip_through_parquet_and_datasets(tmp_path):
    import datasets

    records = make_records(np.random.default_rng(0))
    for cls, recs in records.items():
        path = tmp_path / cls.__name__ / "data" / "train-00000-of-00001.parquet"
        write_parquet(path, recs, cls)
        assert pq.read_schema(path).remove_metadata().equals(cls.ARROW_SCHEMA), cls
        assert read_parquet(path, cls) == recs
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
        assert len(ds) == len(recs)
        assert [cls.from_row(row) for row in ds] == recs, cls


def test_masklet_statistics_from_rles():
    h, w = 10, 12
    masks = np.zeros((5, h, w), bool)
    masks[1, 2:4, 2:5] = True  # 6 px
    masks[3, 0:5, 0:2] = True  # 10 px
    m = Masklet.from_rles("v", 0, [0, 4, 8, 12, 16], [rle_ops.encode(x) for x in masks])
    assert (m.first_visible_frame, m.last_visible_frame, m.visible_count) == (4, 12, 2)
    assert m.mean_area == 8.0 and m.max_area == 10
    assert m.size_bucket == "small"
    assert np.array_equal(m.masks(), masks)


def test_rle_run_lengths_agree_with_pycocotools():
    rng = np.random.default_rng(1)
    for h, w in [(1, 1), (1, 9), (9, 1), (7, 13), (64, 48)]:
        for _ in range(10):
            mask = rng.random((h, w)) < rng.random()
            r = rle_ops.encode(mask)
            runs = rle_ops.run_lengths(r.counts)
            assert sum(runs) == h * w
            assert sum(runs[1::2]) == int(mask.sum()) == rle_ops.area(r)
            assert np.array_equal(coco.decode(r.to_coco()).astype(bool), mask)
            r.check()


def test_rle_rejects_wrong_size_and_corrupt_counts():
    r = rle_ops.encode(np.ones((4, 5), bool))
    with pytest.raises(SchemaError, match=r"size \[4, 5\] does not match the frame size \[5, 4\]") as err:
        Rle.from_json(r.to_json(), expected_size=(5, 4))
    assert err.value.location.field == "size"
    with pytest.raises(SchemaError, match="cover 20 pixels but size"):
        Rle.from_json({"size": [5, 5], "counts": r.counts})
    with pytest.raises(SchemaError, match="invalid character"):
        Rle.from_json({"size": [4, 5], "counts": "\x01\x02"})
    with pytest.raises(SchemaError, match="missing key 'counts'"):
        Rle.from_json({"size": [4, 5]})
    # Uncompressed RLE is accepted and compressed.
    assert Rle.from_json({"size": [2, 2], "counts": [1, 2, 1]}) == rle_ops.encode(np.array([[0, 1], [1, 0]]))


def test_parquet_reader_names_file_row_and_field(tmp_path):
    import pyarrow as pa

    good = make_records(np.random.default_rng(2))[VideoPrediction][0]
    row = good.to_row()
    row["rles"][2]["size"] = [3, 3]  # wrong size on the third frame
    bad_row = dict(row, expression_id="1")
    path = tmp_path / "preds.parquet"
    pq.write_table(pa.Table.from_pylist([good.to_row(), bad_row], schema=VideoPrediction.ARROW_SCHEMA), path)
    with pytest.raises(SchemaError) as err:
        read_parquet(path, VideoPrediction)
    msg = str(err.value)
    assert str(path) in msg and "record 1" in msg and "rles[2]" in msg and "\n" not in msg


def test_parquet_reader_reports_missing_column(tmp_path):
    import pyarrow as pa

    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"video_id": ["a"]}), path)
    with pytest.raises(SchemaError, match=r"v\.parquet: field 'path': column missing"):
        read_parquet(path, Video)


def test_validate_rejects_mismatched_prediction():
    r = rle_ops.encode(np.zeros((4, 4), bool))
    with pytest.raises(SchemaError, match="2 masks for 3 frames"):
        VideoPrediction("v", "0", ["a", "b", "c"], [r, r]).validate()


def test_submission_json_schemas_accept_real_files_and_reject_bad_ones():
    schemas = submission_schemas()
    recs = make_records(np.random.default_rng(3))
    for name, cls in [("video-prediction", VideoPrediction), ("image-prediction", ImagePrediction), ("qa-prediction", QAPrediction)]:
        jsonschema.Draft202012Validator.check_schema(schemas[name])
        for rec in recs[cls]:
            jsonschema.validate(rec.to_row(), schemas[name])
    pred = recs[VideoPrediction][0]
    results = {"v1": {"0": {"prediction_masks": [r.to_json() for r in pred.rles]}}}
    jsonschema.validate(results, schemas["video-results-json"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"v1": {"0": {"masks": []}}}, schemas["video-results-json"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"question_id": "q1"}, schemas["qa-prediction"])
