"""The dataset card (README.md) of a published refsav dataset.

The YAML front matter is produced by the libraries that read it: `configs` by
`datasets.utils.metadata.MetadataConfigs`, `dataset_info` by
`datasets.info.DatasetInfosDict`, the rest by `huggingface_hub.DatasetCardData`, so the
field spellings (`list:` vs `sequence:`, `num_examples` ...) are those the installed
`datasets` writes in `push_to_hub`. The body holds the statistics and the provenance:
models, prompt templates with their content hashes, generation settings, the run's
configuration, toolkit versions, and the licence of the source videos.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

from refsav.schemas.expression import Expression, PromptRef

TOP_CATEGORIES = 25
_SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                    (10_000_000, "1M<n<10M"))

FIELDS = (
    ("video_id", "SA-V video id, e.g. `sav_000001`."),
    ("object_id", "SA-V masklet id = column of the object in the SA-V `masklet` lists (the Ref-SAV object key)."),
    ("formated", "The long referring expression (Ref-SAV's field name, sic)."),
    ("short_caps", "1 to 3 short referring expressions."),
    ("object_description", "Stage 1: what the object is and looks like."),
    ("scene_description", "Stage 2: the object in its scene."),
    ("video_description", "Stage 3: what the object does over the video."),
    ("consistency", "The consistency check: `passed`, `attempts` (descriptions generated), the checker's `reason`."),
    ("provenance", "Model, revision, backend, prompt template ids and sha256, generation config (canonical JSON), "
                   "creation time, toolkit version, the input files (mp4 then SA-V JSON, paths relative to the "
                   "SA-V root, with sha256), and the annotation stages that ran, in order."),
    ("ambiguous", "True when the expressions could also refer to another object of the video."),
    ("ambiguous_with", "Object ids of those other objects."),
    ("category", "Stage 1's category word(s), lower case; empty when the model gave none."),
    ("extra_answers", "Answers of annotation stages beyond the built-in ones, by stage name (key/value pairs)."),
)


@dataclass(frozen=True)
class DatasetStats:
    videos: int
    objects: int
    short_expressions: int
    ambiguous: int
    mean_long_words: float
    mean_short_words: float
    categories: tuple[tuple[str, int], ...]  # most frequent first
    attempts: tuple[tuple[int, int], ...]  # consistency attempts -> objects


@dataclass(frozen=True)
class ProvenanceSummary:
    models: tuple[tuple[str, str, str, int], ...]  # (model_id, revision, backend, rows)
    checkers: tuple[tuple[str, int], ...]
    prompts: tuple[tuple[PromptRef, int], ...]  # every template version used, with its row count
    generation_configs: tuple[tuple[str, int], ...]
    toolkit_versions: tuple[tuple[str, int], ...]
    created_first: str
    created_last: str
    input_files: int  # distinct source files referred to


@dataclass(frozen=True)
class CardInputs:
    repo_id: str
    splits: Sequence[Any]  # publish.SplitFiles
    download_size: int
    stats: DatasetStats
    provenance: ProvenanceSummary
    split_rule: str
    split_args: str  # the export options that reproduce the split, e.g. "--val-fraction 0.1 --split-seed 0"
    run_config: dict[str, Any]
    run_summary: dict[str, Any]
    license: str
    note: str = ""  # shown first, as a notice: e.g. that the rows come from a random-weight model


def _words(text: str) -> int:
    return len(text.split())


def dataset_stats(rows: Sequence[Expression]) -> DatasetStats:
    shorts = [c for e in rows for c in e.short_caps]
    categories = Counter(e.category.strip().lower() or "(none)" for e in rows)
    return DatasetStats(
        videos=len({e.video_id for e in rows}),
        objects=len(rows),
        short_expressions=len(shorts),
        ambiguous=sum(e.ambiguous for e in rows),
        mean_long_words=sum(_words(e.formated) for e in rows) / len(rows) if rows else 0.0,
        mean_short_words=sum(_words(c) for c in shorts) / len(shorts) if shorts else 0.0,
        categories=tuple(sorted(categories.items(), key=lambda kv: (-kv[1], kv[0]))),
        attempts=tuple(sorted(Counter(e.consistency.attempts for e in rows).items())),
    )


def provenance_summary(rows: Sequence[Expression]) -> ProvenanceSummary:
    def ranked(counter: Counter) -> tuple:
        return tuple(sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0]))))

    models = Counter((e.provenance.model_id, e.provenance.model_revision, e.provenance.backend) for e in rows)
    prompts = Counter(p for e in rows for p in e.provenance.prompts)
    created = sorted(e.provenance.created_at for e in rows if e.provenance.created_at)
    return ProvenanceSummary(
        models=tuple((m, r, b, n) for (m, r, b), n in ranked(models)),
        checkers=ranked(Counter(e.provenance.checker_model_id for e in rows if e.provenance.checker_model_id)),
        prompts=tuple(sorted(prompts.items(), key=lambda kv: (kv[0].template_id, kv[0].sha256))),
        generation_configs=ranked(Counter(e.provenance.generation_config for e in rows)),
        toolkit_versions=ranked(Counter(e.provenance.toolkit_version or "(unknown)" for e in rows)),
        created_first=created[0] if created else "",
        created_last=created[-1] if created else "",
        input_files=len({f.path for e in rows for f in e.provenance.input_files}),
    )


def size_category(n: int) -> str:
    for limit, name in _SIZE_CATEGORIES:
        if n < limit:
            return name
    return "n>10M"


def card_yaml(inputs: CardInputs) -> str:
    """The YAML front matter, without the `---` fences."""
    import datasets
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    splits = datasets.splits.SplitDict()
    for s in inputs.splits:
        splits.add(datasets.SplitInfo(name=s.name, num_bytes=s.num_bytes, num_examples=s.num_examples))
    info = datasets.DatasetInfo(
        features=datasets.Features.from_arrow_schema(Expression.ARROW_SCHEMA),
        splits=splits,
        download_size=inputs.download_size,
        dataset_size=sum(s.num_bytes for s in inputs.splits),
    )
    card = DatasetCardData(
        license=inputs.license,
        language=["en"],
        pretty_name=inputs.repo_id.split("/")[-1],
        size_categories=[size_category(inputs.stats.objects)],
        task_categories=["image-segmentation", "video-text-to-text"],
        tags=["referring-video-object-segmentation", "sa-v", "ref-sav", "video", "synthetic-annotations"],
    )
    DatasetInfosDict({"default": info}).to_dataset_card_data(card)
    MetadataConfigs({"default": {"data_files": [{"split": s.name, "path": f"data/{s.name}-*"} for s in inputs.splits]}}
                    ).to_dataset_card_data(card)
    return card.to_yaml()


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return out


def _json_block(value: Any) -> list[str]:
    return ["```json", json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False), "```"]


def render_card(inputs: CardInputs) -> str:
    st, pv, rs = inputs.stats, inputs.provenance, inputs.run_summary
    name = inputs.repo_id
    lines = [
        "---", card_yaml(inputs).rstrip("\n"), "---", "",
        f"# {name.split('/')[-1]}", "",
        *([f"> **Note:** {' '.join(inputs.note.split())}", ""] if inputs.note.strip() else []),
        "Referring expressions for objects of [SA-V](https://ai.meta.com/datasets/segment-anything-video/) videos, "
        "in the Ref-SAV style of Sa2VA: one row per SA-V masklet with a long expression (`formated`) and 1-3 short "
        "ones (`short_caps`), written by a vision-language model in three stages (object, scene, video), checked for "
        "consistency, and merged; built with the `refsav` toolkit (`refsav annotate`, `refsav publish`).",
        "",
        "The rows hold text only. Videos and masks stay in SA-V: `provenance.input_files` names the mp4 and the SA-V "
        "annotation JSON of each row (paths relative to the SA-V root, with sha256), and `object_id` is the column "
        "of the object's masklet in that JSON.",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'ds = load_dataset("{name}")',
        'row = ds["train"][0]  # row["formated"], row["short_caps"], row["video_id"], row["object_id"]',
        "```",
        "",
        "## Splits", "",
        *_table(["split", "videos", "objects (rows)", "files"],
                [(s.name, s.videos, s.num_examples, len(s.files)) for s in inputs.splits]),
        "",
        f"Train and validation are split by video, never by object, and deterministically: {inputs.split_rule}.",
        "",
        "## Statistics", "",
        *_table(["", "value"], [
            ("videos", st.videos),
            ("objects (long expressions)", st.objects),
            ("short expressions", st.short_expressions),
            ("objects flagged ambiguous", st.ambiguous),
            ("mean words per long expression", f"{st.mean_long_words:.1f}"),
            ("mean words per short expression", f"{st.mean_short_words:.1f}"),
            ("distinct categories", len(st.categories)),
        ]),
        "",
    ]
    if rs:
        dropped = rs.get("objects_dropped") or {}
        run_rows = [
            ("videos read", rs.get("videos", "")), ("videos skipped", rs.get("videos_skipped", "")),
            ("objects seen", rs.get("objects_seen", "")), ("objects kept", rs.get("objects_kept", "")),
        ] + [(f"objects dropped: {k}", v) for k, v in sorted(dropped.items())]
        lines += ["Annotation run (from its `run.json`):", "", *_table(["", "value"], run_rows), ""]
    lines += [
        f"Categories (top {min(TOP_CATEGORIES, len(st.categories))} of {len(st.categories)}):", "",
        *_table(["category", "objects"], st.categories[:TOP_CATEGORIES]), "",
        "Consistency check: descriptions generated per kept object.", "",
        *_table(["attempts", "objects"], st.attempts), "",
        "## Fields", "",
        *_table(["field", "meaning"], FIELDS), "",
        "## Provenance", "",
        *_table(["model", "revision", "backend", "rows"], pv.models), "",
    ]
    if pv.checkers:
        lines += ["Consistency-check model(s), when not the describing model:", "",
                  *_table(["model", "rows"], pv.checkers), ""]
    lines += [
        "Prompt templates (sha256 of the template text; an edited template is a new prompt):", "",
        *_table(["template", "sha256", "rows"], [(p.template_id, f"`{p.sha256}`", n) for p, n in pv.prompts]), "",
        "Generation config(s):", "",
        *_table(["config", "rows"], [(f"`{c}`", n) for c, n in pv.generation_configs]), "",
        "Toolkit version(s): " + ", ".join(f"`{v}` ({n} rows)" for v, n in pv.toolkit_versions) + ".",
        f"Rows created between {pv.created_first or '?'} and {pv.created_last or '?'}, "
        f"from {pv.input_files} distinct SA-V files.",
        "",
    ]
    if inputs.run_config:
        lines += ["Run configuration (`run.json` `config`):", "", *_json_block(inputs.run_config), ""]
    lines += [
        "## Licence", "",
        f"This card declares `{inputs.license}`. The source videos and masklets are SA-V by Meta, released under "
        "CC BY 4.0 (Creative Commons Attribution 4.0); they are not redistributed here and must be obtained from "
        "Meta. The expressions were generated by the models listed above; their licences or terms of use may add "
        "conditions on generated text.",
        "",
        "## Using it with Sa2VA and the Ref-SAV benchmark", "",
        "From the output folder of `refsav annotate`, with the split above: the Sa2VA training JSON from the train "
        "videos, and a benchmark in the Ref-SAV eval layout from the validation videos:", "",
        "```bash",
        f"refsav export refsav-json --data OUT --out Ref-SAV.json --split train {inputs.split_args}",
        f"refsav export benchmark --data OUT --out ref_sav_eval --split validation {inputs.split_args} --select 2000 --seed 0",
        "refsav score --protocol refsav --gt ref_sav_eval --pred results.json --out scores",
        "```",
        "",
        "## Citation", "",
        "SA-V: Ravi et al., *SAM 2: Segment Anything in Images and Videos*, arXiv:2408.00714, 2024. "
        "Ref-SAV: Yuan et al., *Sa2VA: Marrying SAM2 with LLaVA for Dense Grounded Understanding of Images and "
        "Videos*, arXiv:2501.04001, 2025.",
        "",
    ]
    return "\n".join(lines)
