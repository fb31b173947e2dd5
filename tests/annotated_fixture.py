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

`grounded=True` writes the rows a run with `--grounder` would: every row but those of the
last video (kept ungrounded, as if annotated before a grounder was set, so that consumers
see null grounding beside filled) carries a `Grounding` with known scores
(`long_score` / `short_score`, spread over [0.3, 1)); short expressions scoring below
`MIN_GROUNDING` are removed (kept=False), one more object is dropped with reason
`grounding_failed`, and the ambiguous pair is flagged by grounding (`confusable_with`).
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from refsav.pipelines.sample import CHUNK, SampleConfig, write_sample
from refsav.schemas.base import canonical_json
from refsav.schemas.expression import (
    Confusable,
    Consistency,
    Expression,
    FileHash,
    GrounderIdentity,
    Grounding,
    GroundingScore,
    PromptRef,
    Provenance,
)
from refsav.schemas.io import atomic_write_json, read_json, sha256_file, write_parquet
from refsav.schemas.version import __version__

MODEL_ID = "synthetic/fact-writer"
CHECKER_ID = "synthetic/fact-checker"
GENERATION_CONFIG = canonical_json({"max_tokens": 256, "seed": 0, "temperature": 0.0})
CREATED_AT = "2025-01-02T03:04:05+00:00"
STAGES = ("object", "check", "scene", "video", "merge")
MIN_GROUNDING = 0.5  # the grounded fixture's policy: long or short expressions below it fail
GROUNDER = GrounderIdentity(
    model="synthetic/tiny-sa2va", sha256="5a" * 32, endpoint="in-process", inference="official",
    settings=canonical_json({"ambiguity_margin": 0.05, "margin_frames": 2, "min_grounding": MIN_GROUNDING}),
)


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
    drop_reasons: dict[tuple[str, int], str]  # reason of every dropped masklet
    grounded: bool = False


def long_score(video_index: int, object_id: int) -> float:
    """The grounded fixture's long-expression J&F: in [0.52, 0.98], so every kept object passes."""
    return round(0.52 + ((7 * video_index + 5 * object_id) % 24) / 50, 4)


def short_score(video_index: int, object_id: int, k: int) -> float:
    """J&F of short expression k (0-based): in [0.30, 0.98], some below MIN_GROUNDING."""
    return round(0.30 + ((11 * video_index + 7 * object_id + 13 * k) % 35) / 50, 4)


def _score(text: str, kind: str, jf: float, kept: bool, other: int | None, other_jf: float | None) -> GroundingScore:
    d = min(0.02, jf, 1.0 - jf)  # J and F straddle their mean and stay in [0, 1]
    return GroundingScore(text, kind, jf, round(jf - d, 4), round(jf + d, 4), kept, other, other_jf)


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
    grounded: bool = False,
) -> AnnotatedFixture:
    """Render the sample under root/sav and write its annotate output under root/out."""
    root = Path(root)
    cfg = SampleConfig(videos=videos, seed=seed, width=width, height=height, frames=frames, objects=objects)
    sample = root / "sav"
    ids = write_sample(sample, cfg, show_progress=False)
    return write_annotated_out(sample, root / "out", cfg, ids, shard_size=shard_size, grounded=grounded)


def write_annotated_out(sample: Path, out: Path, cfg: SampleConfig, ids: list[str], *, shard_size: int = 2,
                        grounded: bool = False) -> AnnotatedFixture:
    texts = read_json(sample / "Ref-SAV.json")
    truth = read_json(sample / "synthetic.json")["videos"]
    refs = prompt_refs()
    # The last masklet of the last video has no row (as if its description failed the
    # check); objects 0 and 1 of the first video could be mistaken for each other.
    drop_reasons = {(ids[-1], cfg.objects - 1): "consistency_failed"}
    if grounded and len(ids) >= 3:
        drop_reasons[(ids[-2], 0)] = "grounding_failed"  # its long expression segmented something else
    dropped = list(drop_reasons)
    ambiguous = [(ids[0], 0), (ids[0], 1)] if cfg.objects >= 2 else []
    rows: list[Expression] = []
    categories: dict[tuple[str, int], str] = {}
    for vi, vid in enumerate(ids):
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
            shorts = list(text["short_caps"])
            grounding = None
            if grounded and vi < len(ids) - 1:
                grounding = _grounding(vi, oid, text["formated"], shorts, others, cfg)
                shorts = [sc.text for sc in grounding.scores[1:] if sc.kept]
            rows.append(
                Expression(
                    video_id=vid,
                    object_id=oid,
                    formated=text["formated"],
                    short_caps=shorts,
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
                        grounder=GROUNDER if grounding is not None else None,
                    ),
                    ambiguous=bool(others),
                    ambiguous_with=others,
                    category=attrs["category"],
                    grounding=grounding,
                )
            )
    rows.sort(key=lambda e: (e.video_id, e.object_id))
    _write_shards(out, sample, ids, rows, shard_size, refs, drop_reasons)
    return AnnotatedFixture(sample, out, cfg, ids, rows, dropped, ambiguous, categories, drop_reasons, grounded)


def _grounding(vi: int, oid: int, long: str, shorts: list[str], confusable: list[int], cfg: SampleConfig) -> Grounding:
    """Known scores for one object. An unambiguous object's best other masklet scores far
    below its own; an ambiguous one's partner scores just under the long expression."""
    jf = long_score(vi, oid)
    partner = confusable[0] if confusable else (oid + 1) % cfg.objects if cfg.objects > 1 else None
    other_jf = round(jf - 0.03, 4) if confusable else (round(jf * 0.25, 4) if partner is not None else None)
    scores = [_score(long, "long", jf, True, partner, other_jf)]
    for k, text in enumerate(shorts):
        s = short_score(vi, oid, k)
        scores.append(_score(text, "short", s, s >= MIN_GROUNDING, partner, round(s * 0.25, 4) if partner is not None else None))
    return Grounding(frames=list(range(0, cfg.frames, 4)), scores=scores,
                     confusable_with=[Confusable(o, round(jf - 0.03, 4)) for o in confusable])


def _write_shards(out: Path, sample: Path, ids: list[str], rows: list[Expression], shard_size: int,
                  refs: list[PromptRef], drop_reasons: dict[tuple[str, int], str]) -> None:
    groups = [ids[i : i + shard_size] for i in range(0, len(ids), shard_size)]
    config = {"vlm": {"backend": "synthetic", "model": MODEL_ID, "max_tokens": 256, "temperature": 0.0, "seed": 0},
              "checker": {"backend": "synthetic", "model": CHECKER_ID}, "check": True, "highlight": "contour",
              "object_frames": 2, "video_frames": 8, "masklets": "manual", "extra": {}}
    summary = {"out": str(out), "shards": len(groups), "shards_done": len(groups), "shards_failed": [],
               "videos": len(ids), "videos_skipped": 0, "objects_seen": len(rows) + len(drop_reasons),
               "objects_kept": len(rows), "objects_dropped": dict(sorted(Counter(drop_reasons.values()).items())),
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

