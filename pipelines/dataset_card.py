"""The dataset card (README.md) of a published refsav dataset.

The YAML front matter is produced by the libraries that read it: `configs` by
`datasets.utils.metadata.MetadataConfigs`, `dataset_info` by
`datasets.info.DatasetInfosDict`, the rest by `huggingface_hub.DatasetCardData`, so the
field spellings (`list:` vs `sequence:`, `num_examples` ...) are those the installed
`datasets` writes in `push_to_hub`. The body holds the statistics and the provenance:
models, prompt templates with their content hashes, generation settings, the run's
configuration, toolkit versions, and the licence of the source videos.

When rows carry grounding (`refsav annotate --grounder`), the card also shows how well
the expressions segment their own masklet: a histogram of grounding J&F over the kept
expressions (the long one and each kept short one), drawn as a PNG that `publish` writes
beside the card (`HISTOGRAM_FILE`) and given as a table of the same bin counts, so that
the numbers can be read without the image; and the counts of objects dropped, short
expressions removed and objects flagged ambiguous by grounding.
"""
from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from refsav.schemas.expression import Expression, GrounderIdentity, PromptRef

TOP_CATEGORIES = 25
_SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                    (10_000_000, "1M<n<10M"))

FIELDS = (
    ("video_id", "SA-V video id, e.g. `sav_000001`."),
    ("object_id", "SA-V masklet id = column of the object in the SA-V `masklet` lists (the Ref-SAV object key)."),
    ("formated", "The long referring expression (Ref-SAV's field name, sic)."),
    ("short_caps", "Up to 3 short referring expressions: at least 1, except in a grounded row whose short ones all "
                   "failed grounding (they are kept in `grounding.scores`)."),
    ("object_description", "Stage 1: what the object is and looks like."),
    ("scene_description", "Stage 2: the object in its scene."),
    ("video_description", "Stage 3: what the object does over the video."),
    ("consistency", "The consistency check: `passed`, `attempts` (descriptions generated), the checker's `reason`."),
    ("provenance", "Model, revision, backend, prompt template ids and sha256, generation config (canonical JSON), "
                   "creation time, toolkit version, the input files (mp4 then SA-V JSON, paths relative to the "
                   "SA-V root, with sha256), and the annotation stages that ran, in order."),
    ("ambiguous", "True when the expressions could also refer to another object of the video."),
    ("ambiguous_with", "Object ids of those other objects."),
    ("category", "Stage 1's category, one or more words in lower case; empty when the model gave none."),
    ("extra_answers", "Answers of annotation stages beyond the built-in ones, by stage name (key/value pairs)."),
    ("grounding", "What the grounding stage measured, or null when the row was annotated without a grounder: "
                  "`frames` segmented, `scores` (the long expression first, then every short one, including those "
                  "removed, `kept` false) with J&F, J and F in [0, 1] against the object's own masklet and the best "
                  "other object's id and J&F, and `confusable_with` (objects whose masklet the long expression "
                  "also matches). `provenance.grounder` names the grounding model and its settings."),
)

HISTOGRAM_FILE = "grounding_jf.png"  # beside README.md in the published folder
HISTOGRAM_BINS = 20  # of width 0.05 over [0, 1]
GROUNDING_FAILED = "grounding_failed"  # the drop reason annotate records for a failed long expression
_BAR_RGB = (31, 119, 180)  # only the bars have this colour: tests find them in the image by it


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
class GroundingStats:
    """Grounding over the published rows; `rows_grounded == 0` means no grounder was used."""

    rows_grounded: int
    rows_ungrounded: int
    kept_scores: tuple[float, ...]  # J&F of every kept expression: long ones, then kept short ones
    long_scores: tuple[float, ...]
    bin_edges: tuple[float, ...]  # HISTOGRAM_BINS + 1 edges; the last bin includes 1.0
    bin_counts: tuple[int, ...]  # kept expressions per bin
    shorts_removed: int  # short expressions the grounder removed (kept=False)
    ambiguous_flagged: int  # grounded rows flagged ambiguous, with confusable_with
    grounders: tuple[tuple[GrounderIdentity, int], ...]  # identity -> rows

    @property
    def used(self) -> bool:
        return self.rows_grounded > 0


def grounding_stats(rows: Sequence[Expression]) -> GroundingStats:
    grounded = [e for e in rows if e.grounding is not None]
    long_scores = [e.grounding.scores[0].j_and_f for e in grounded]
    short_kept = [sc.j_and_f for e in grounded for sc in e.grounding.scores[1:] if sc.kept]
    kept = long_scores + short_kept
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    counts, _ = np.histogram(np.asarray(kept, dtype=np.float64), bins=edges)
    grounders = Counter(e.provenance.grounder for e in grounded if e.provenance.grounder is not None)
    return GroundingStats(
        rows_grounded=len(grounded),
        rows_ungrounded=len(rows) - len(grounded),
        kept_scores=tuple(kept),
        long_scores=tuple(long_scores),
        bin_edges=tuple(float(x) for x in edges),
        bin_counts=tuple(int(n) for n in counts),
        shorts_removed=sum(not sc.kept for e in grounded for sc in e.grounding.scores[1:]),
        ambiguous_flagged=sum(e.ambiguous and bool(e.grounding.confusable_with) for e in grounded),
        grounders=tuple(sorted(grounders.items(), key=lambda kv: (-kv[1], kv[0].model, kv[0].settings))),
    )


def _bin_label(edges: Sequence[float], i: int) -> str:
    close = "]" if i == len(edges) - 2 else ")"
    return f"[{edges[i]:.2f}, {edges[i + 1]:.2f}{close}"


def histogram_png(stats: GroundingStats) -> bytes:
    """The histogram of kept expressions' grounding J&F as PNG bytes (deterministic).

    Bars are 80% of a bin wide, so that neighbouring bars never touch, and are the
    only pixels of `_BAR_RGB`; drawn without anti-aliasing so their heights are exact."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    edges = np.asarray(stats.bin_edges)
    counts = np.asarray(stats.bin_counts)
    width = edges[1] - edges[0]
    fig = Figure(figsize=(8, 4), dpi=100)
    FigureCanvasAgg(fig)  # a figure of its own, without pyplot's global state
    ax = fig.add_axes((0.09, 0.14, 0.88, 0.76))
    color = tuple(c / 255 for c in _BAR_RGB)
    ax.bar(edges[:-1] + width / 2, counts, width=0.8 * width, color=color, linewidth=0, antialiased=False)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, max(1.0, float(counts.max()) * 1.1))
    ax.set_xticks(np.linspace(0.0, 1.0, 11))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("grounding J&F against the object's own masklet")
    ax.set_ylabel("kept expressions")
    n_long, n_short = len(stats.long_scores), len(stats.kept_scores) - len(stats.long_scores)
    ax.set_title(f"{n_long} long + {n_short} short expressions ({stats.rows_grounded} grounded objects)")
    buf = io.BytesIO()
    # No "Software" entry: the bytes then depend only on the figure, not on matplotlib's version string.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


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
    grounding: GroundingStats | None = None
    histogram: str = ""  # the histogram's file name beside the card; "" when none was drawn


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


def _grounding_section(g: GroundingStats | None, run_summary: dict[str, Any], histogram: str) -> list[str]:
    lines = ["## Grounding", ""]
    if g is None or not g.used:
        return lines + [
            "No grounder was used: the expressions were not segmented back to their masklets, so `grounding` and "
            "`provenance.grounder` are null in every row, and `ambiguous` comes from the text heuristic "
            "(another object of the same category, and no word that tells them apart).", ""]
    scores = np.asarray(g.kept_scores, dtype=np.float64)
    lines += [
        "Each expression was segmented by a referring segmentation model (below, under Provenance) and the "
        "predicted masklet scored with J&F against the object's own masklet, and against every other object's. "
        "Objects whose long expression scored too low were dropped; short expressions that failed on their own "
        "were removed; objects that another masklet matches about as well were flagged `ambiguous`, with "
        "`grounding.confusable_with`.", "",
    ]
    if g.rows_ungrounded:
        lines += [f"{g.rows_ungrounded} of {g.rows_grounded + g.rows_ungrounded} rows were annotated without a "
                  "grounder: their `grounding` is null (not zero) and they are left out of the figures below.", ""]
    if histogram:
        lines += [f"![Grounding J&F of kept expressions]({histogram})", ""]
    lines += [
        f"Grounding J&F of the kept expressions ({len(g.long_scores)} long, "
        f"{len(g.kept_scores) - len(g.long_scores)} short): mean {scores.mean():.3f}, median "
        f"{float(np.median(scores)):.3f}, lowest {scores.min():.3f}.", "",
        *_table(["J&F", "expressions"],
                [(_bin_label(g.bin_edges, i), n) for i, n in enumerate(g.bin_counts)]), "",
    ]
    dropped = run_summary.get("objects_dropped") if isinstance(run_summary.get("objects_dropped"), dict) else {}
    reasons: list[tuple[str, Any]] = [
        ("objects dropped by grounding (`grounding_failed`: the long expression's J&F below the threshold)",
         dropped.get(GROUNDING_FAILED, 0) if dropped else "(not in run.json)"),
    ]
    reasons += [(f"objects dropped for another reason: `{k}`", v) for k, v in sorted(dropped.items()) if k != GROUNDING_FAILED]
    reasons += [
        ("short expressions removed by grounding (failed on their own)", g.shorts_removed),
        ("objects flagged ambiguous by grounding (`confusable_with`)", g.ambiguous_flagged),
        ("objects kept with grounding", g.rows_grounded),
    ]
    if g.rows_ungrounded:
        reasons.append(("objects kept without grounding (null)", g.rows_ungrounded))
    return lines + ["Counts by reason (drops from the run's `run.json`, the rest from the rows):", "",
                    *_table(["reason", "count"], reasons), ""]


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
        *_grounding_section(inputs.grounding, rs, inputs.histogram),
        "## Fields", "",
        *_table(["field", "meaning"], FIELDS), "",
        "## Provenance", "",
        *_table(["model", "revision", "backend", "rows"], pv.models), "",
    ]
    if pv.checkers:
        lines += ["Consistency-check model(s), when not the describing model:", "",
                  *_table(["model", "rows"], pv.checkers), ""]
    if inputs.grounding is not None and inputs.grounding.grounders:
        lines += ["Grounding model(s) (`provenance.grounder`; settings hold the predict options and the policy):", "",
                  *_table(["model", "sha256", "endpoint", "inference", "settings", "rows"],
                          [(g.model, f"`{g.sha256}`" if g.sha256 else "", g.endpoint, g.inference, f"`{g.settings}`", n)
                           for g, n in inputs.grounding.grounders]), ""]
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
