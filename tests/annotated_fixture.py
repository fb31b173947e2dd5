"""A synthetic `refsav annotate` output, for tests of the commands that consume one.

`build_annotated(root)` renders a small synthetic SA-V sample with
`refsav.pipelines.sample.write_sample` and writes, beside it, the folder that `refsav annotate
--out OUT` produces:

    OUT/data/train-0000i-of-0000n.parquet   Expression rows (one per kept masklet)
    OUT/stats/shard-0000i.json, OUT/markers/shard-0000i.done
    OUT/plan.json, OUT/run.json             run.json["input"] = the sample root

The texts are the sample's own (Ref-SAV.json), which are true of the rendered video;
the category is the object's true shape. One object is left out as a model would drop
it, and two objects of the first video are flagged ambiguous with each other, so
consumers see every kind of row. Plain functions, so that any test can build one.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from refsav.pipelines.sample import CHUNK, SampleConfig, write_sample
from refsav.schemas.base import canonical_json
from refsav.schemas.expression import Consistency, Expression, FileHash, PromptRef, Provenance
from refsav.schemas.io import atomic_write_json, read_json, sha256_file, write_parquet
from refsav.schemas.version import __version__

MODEL_ID = "synthetic/fact-writer"
CHECKER_ID = "synthetic/fact-checker"
GENERATION_CONFIG = canonical_json({"max_tokens": 256, "seed": 0, "temperature": 0.0})
CREATED_AT = "2025-01-02T03:04:05+00:00"
STAGES = ("object", "check", "scene", "video", "merge")


@dataclass(frozen=True)
class AnnotatedFixture:
    sample: Path  # the synthetic SA-V root (run.json "input")
    out: Path  # the fake annotate OUT
    config: SampleConfig
    video_ids: list[str]
    expressions: list[Expression]  # every row written, sorted by (video_id, object_id)
    dropped: list[tuple[str, int]]  # masklets without a row
    ambiguous: list[tuple[str, int]]
    categories: dict[tuple[str, int], str]  # true category of every masklet, rows or not


def prompt_refs() -> list[PromptRef]:
    """The built-in prompt templates' ids and content hashes, as annotate records them."""
    folder = Path(__file__).resolve().parents[1] / "pipelines" / "annotate" / "prompts"
    refs = []
    for stage in STAGES:
        files = sorted(folder.glob(f"{stage}.v*.txt"))
        if files:
            path = files[-1]
            refs.append(PromptRef(f"{stage}/{path.stem.split('.')[-1]}", hashlib.sha256(path.read_bytes()).hexdigest()))
        else:  # a checkout without the templates still gets well-formed refs
            refs.append(PromptRef(f"{stage}/v1", hashlib.sha256(stage.encode()).hexdigest()))
    return refs


def build_annotated(
    root: str | Path,
    *,
    videos: int = 5,
    seed: int = 11,
    width: int = 192,
    height: int = 112,
    frames: int = 24,
    objects: int = 3,
    shard_size: int = 2,
) -> AnnotatedFixture:
    """Render the sample under root/sav and write its annotate output under root/out."""
    root = Path(root)
    cfg = SampleConfig(videos=videos, seed=seed, width=width, height=height, frames=frames, objects=objects)
    sample = root / "sav"
    ids = write_sample(sample, cfg, show_progress=False)
    return write_annotated_out(sample, root / "out", cfg, ids, shard_size=shard_size)


def write_annotated_out(sample: Path, out: Path, cfg: SampleConfig, ids: list[str], *, shard_size: int = 2) -> AnnotatedFixture:
    texts = read_json(sample / "Ref-SAV.json")
    truth = read_json(sample / "synthetic.json")["videos"]
    refs = prompt_refs()
    # The last masklet of the last video has no row (as if its description failed the
    # check); objects 0 and 1 of the first video could be mistaken for each other.
    dropped = [(ids[-1], cfg.objects - 1)]
    ambiguous = [(ids[0], 0), (ids[0], 1)] if cfg.objects >= 2 else []
    rows: list[Expression] = []
    categories: dict[tuple[str, int], str] = {}
    for vid in ids:
        mp4 = sample / CHUNK / f"{vid}.mp4"
        ann = sample / CHUNK / f"{vid}_manual.json"
        inputs = [FileHash(str(p.relative_to(sample)), sha256_file(p)) for p in (mp4, ann)]
        for attrs in truth[vid]:
            oid = int(attrs["object_id"])
            categories[(vid, oid)] = attrs["category"]
            if (vid, oid) in dropped:
                continue
            text = texts[vid]["objects"][str(oid)]
            others = [o for v, o in ambiguous if v == vid and o != oid] if (vid, oid) in ambiguous else []
            rows.append(
                Expression(
                    video_id=vid,
                    object_id=oid,
                    formated=text["formated"],
                    short_caps=list(text["short_caps"]),
                    object_description=f"a {attrs['size']} {attrs['appearance']} {attrs['category']}",
                    scene_description=f"the {attrs['appearance']} {attrs['category']} at depth {attrs['depth']}",
                    video_description=f"it {attrs['motion']}" + (" while spinning" if attrs["spins"] else ""),
                    consistency=Consistency(passed=True, attempts=1 + (oid % 2), reason="matches the highlighted object"),
                    provenance=Provenance(
                        model_id=MODEL_ID,
                        model_revision="r1",
                        backend="synthetic",
                        prompts=refs,
                        generation_config=GENERATION_CONFIG,
                        created_at=CREATED_AT,
                        toolkit_version=__version__,
                        input_files=inputs,
                        checker_model_id=CHECKER_ID,
                    ),
                    ambiguous=bool(others),
                    ambiguous_with=others,
                    category=attrs["category"],
                )
            )
    rows.sort(key=lambda e: (e.video_id, e.object_id))
    _write_shards(out, sample, ids, rows, shard_size, refs, dropped)
    return AnnotatedFixture(sample, out, cfg, ids, rows, dropped, ambiguous, categories)


def _write_shards(out: Path, sample: Path, ids: list[str], rows: list[Expression], shard_size: int,
                  refs: list[PromptRef], dropped: list[tuple[str, int]]) -> None:
    groups = [ids[i : i + shard_size] for i in range(0, len(ids), shard_size)]
    config = {"vlm": {"backend": "synthetic", "model": MODEL_ID, "max_tokens": 256, "temperature": 0.0, "seed": 0},
              "checker": {"backend": "synthetic", "model": CHECKER_ID}, "check": True, "highlight": "contour",
              "object_frames": 2, "video_frames": 8, "masklets": "manual", "extra": {}}
    summary = {"out": str(out), "shards": len(groups), "shards_done": len(groups), "shards_failed": [],
               "videos": len(ids), "videos_skipped": 0, "objects_seen": len(rows) + len(dropped),
               "objects_kept": len(rows), "objects_dropped": {"consistency_failed": len(dropped)},
               "ambiguous": sum(r.ambiguous for r in rows)}
    for i, group in enumerate(groups):
        shard_rows = [r for r in rows if r.video_id in group]
        data = out / "data" / f"train-{i:05d}-of-{len(groups):05d}.parquet"
        write_parquet(data, shard_rows, Expression)
        atomic_write_json(out / "stats" / f"shard-{i:05d}.json", {"shard": i, "videos": len(group), "objects_kept": len(shard_rows)})
        atomic_write_json(out / "markers" / f"shard-{i:05d}.done", {"rows": len(shard_rows), "sha256": sha256_file(data)})
    atomic_write_json(out / "plan.json", {"settings": config, "prompts": [asdict(r) for r in refs], "shards": groups}, indent=1)
    atomic_write_json(out / "run.json", {"started_at": CREATED_AT, "updated_at": CREATED_AT, "input": str(sample.resolve()),
                                         "executor": "local", "scheduler": "", "config": config, "summary": summary}, indent=1)

