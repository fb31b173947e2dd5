"""Head-only DeSa2VA training on `refsav annotate` output.

    samples = load_samples("OUT")                     # OUT/data/*.parquet + OUT/run.json
    result = train_heads(DeSa2VA.from_sa2va(sa2va), samples, TrainConfig(steps=500))
    save_heads("heads.safetensors", result.heads)

A sample is one annotated SA-V frame where the object is visible: the frame, a
referring text (the long `formated` expression or the first short caption) and the
ground-truth mask of the masklet (`object_id` = SA-V masklet id). The LLM and SAM-2
are frozen: each sample's [SEG] hidden state (teacher-forced answer "Sure, [SEG].")
and SAM-2 image features are computed once, then only the heads train (AdamW).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from refsav.schemas.errors import RefsavError, SchemaError
from refsav.schemas.expression import Expression
from refsav.schemas.io import read_json, read_parquet
from refsav.schemas.media import read_frames
from refsav.schemas.rle import decode
from refsav.schemas.sav import read_sav_json

from .desa2va import DeSa2VA, DecoupleHeads, triple_loss
from .preprocess import to_pil
from .sam2_wrapper import FrameFeatures

QUESTION = "<image>\nPlease segment {expression}."
ANSWER = "Sure, [SEG]."


@dataclass(frozen=True)
class HeadSample:
    video_id: str
    object_id: int
    frame_index: int
    text: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) bool


def _pick(visible: Sequence[int], k: int) -> list[int]:
    """k positions spread evenly over the visible annotated frames."""
    if len(visible) <= k:
        return list(visible)
    return [visible[round(i * (len(visible) - 1) / max(k - 1, 1))] for i in range(k)]


def load_samples(out: str | Path, *, text: Literal["formated", "short"] = "formated",
                 frames_per_object: int = 1, limit: int | None = None) -> list[HeadSample]:
    """Samples of the first `limit` expression rows (all by default), shards in name order."""
    out = Path(out)
    if not out.is_dir():
        raise SchemaError("expected a `refsav annotate` output folder (run.json + data/*.parquet)", file=out)
    if text not in ("formated", "short"):
        raise RefsavError(f"must be 'formated' or 'short', got {text!r}", field="text")
    if frames_per_object < 1:
        raise RefsavError(f"must be positive, got {frames_per_object}", field="frames_per_object")
    run = read_json(out / "run.json")
    if not isinstance(run, dict) or not isinstance(run.get("input"), str):
        raise SchemaError("needs the input root as a string", file=out / "run.json", field="input")
    root = Path(run["input"])
    shards = sorted((out / "data").glob("*.parquet"))
    if not shards:
        raise SchemaError("no Parquet shards in data/", file=out)
    samples: list[HeadSample] = []
    rows = 0
    for shard in shards:
        for i, row in enumerate(read_parquet(shard, Expression)):
            if limit is not None and rows >= limit:
                return samples
            rows += 1
            samples.extend(_row_samples(row, root, text, frames_per_object, where=(shard, i)))
    return samples


def _row_samples(row: Expression, root: Path, text: str, k: int, where) -> list[HeadSample]:
    shard, i = where
    files = row.provenance.input_files
    if len(files) < 2:
        raise SchemaError(f"expected the mp4 and the SA-V json, got {len(files)} files", file=shard, record=i,
                          field="provenance.input_files")
    mp4, ann_path = root / files[0].path, root / files[1].path
    ann = read_sav_json(ann_path, video_path=str(mp4))
    try:
        masklet = ann.masklet(row.object_id)
    except KeyError:
        raise SchemaError(f"masklet {row.object_id} is not in {ann_path}", file=shard, record=i, field="object_id") from None
    visible = [t for t, r in enumerate(masklet.rles) if decode(r).any()]
    chosen = _pick(visible, k)
    if not chosen:
        return []
    frame_ids = [masklet.frame_indices[t] for t in chosen]
    frames = read_frames(mp4, frame_ids)
    words = row.formated if text == "formated" else row.short_caps[0]
    return [
        HeadSample(row.video_id, row.object_id, f, words, frames[j], decode(masklet.rles[t]).astype(bool))
        for j, (t, f) in enumerate(zip(chosen, frame_ids))
    ]


@dataclass(frozen=True)
class Prepared:
    seg_hidden: torch.Tensor  # (1, H) frozen LLM state at the [SEG]
    features: FrameFeatures  # frozen SAM-2 image features of the frame
    target: torch.Tensor  # (1, S, S) float 0/1, GT squash-resized like the image


def prepare(model: DeSa2VA, samples: Sequence[HeadSample],
            on_item: Callable[[HeadSample], None] | None = None) -> list[Prepared]:
    """Frozen [SEG] states and SAM-2 features of every sample, once; `on_item` after each."""
    sa2va = model.sa2va
    enc = sa2va.model.grounding_encoder
    S = enc.image_size
    out = []
    shared_pos: list[torch.Tensor] | None = None
    for s in samples:
        g = sa2va.ground(QUESTION.format(expression=s.text), image=s.image, answer=ANSWER)
        if g.seg_hidden.shape[0] != 1:
            raise RefsavError(f"the answer gave {g.seg_hidden.shape[0]} [SEG] states, expected 1", field="answer")
        ff = enc.encode(sa2va.sam2_image_pixels(to_pil(s.image))[None])  # as inference normalises images
        # SAM-2's position encodings depend only on the feature-map sizes, which every
        # sample shares (all are squashed to S x S); at S = 1024 they are ~88 MB a
        # sample, several times the features themselves, so one copy serves all.
        if shared_pos is None:
            shared_pos = ff.vision_pos
        elif all(torch.equal(a, b) for a, b in zip(shared_pos, ff.vision_pos)):
            ff = FrameFeatures(ff.vision_feats, shared_pos, ff.feat_sizes)
        m = torch.from_numpy(s.mask.astype(np.float32))[None, None]
        target = (F.interpolate(m, size=(S, S), mode="bilinear", align_corners=False)[:, 0] > 0.5).float()
        out.append(Prepared(g.seg_hidden, ff, target.to(sa2va.model.device)))
        if on_item is not None:
            on_item(s)
    return out


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 200
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 4  # samples per step (accumulated: each has its own image)


@dataclass(frozen=True)
class StepLog:
    step: int
    text: float
    vision: float
    fused: float
    total: float


@dataclass(frozen=True)
class TrainResult:
    heads: DecoupleHeads
    history: tuple[StepLog, ...]


def assert_frozen_untouched(model: DeSa2VA) -> None:
    for name, p in model.frozen_parameters():
        if p.requires_grad or p.grad is not None:
            raise AssertionError(f"frozen parameter {name} takes or holds a gradient")


def train_heads(model: DeSa2VA, samples: Sequence[HeadSample] | Sequence[Prepared], config: TrainConfig = TrainConfig(),
                log: Callable[[StepLog], None] | None = None) -> TrainResult:
    if not samples:
        raise SchemaError("no training samples")
    data = list(samples) if isinstance(samples[0], Prepared) else prepare(model, samples)
    model.sa2va.model.requires_grad_(False)
    model.heads.train()
    opt = torch.optim.AdamW(model.heads.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    order = itertools.cycle(range(len(data)))
    history = []
    for step in range(config.steps):
        batch = [data[next(order)] for _ in range(min(config.batch_size, len(data)))]
        opt.zero_grad(set_to_none=True)
        sums = np.zeros(4)
        for item in batch:
            losses = triple_loss(model.forward_features(item.seg_hidden, item.features), item.target, model.config)
            (losses.total / len(batch)).backward()
            sums += [losses.text.item(), losses.vision.item(), losses.fused.item(), losses.total.item()]
        assert_frozen_untouched(model)
        opt.step()
        entry = StepLog(step, *(float(x) for x in sums / len(batch)))
        history.append(entry)
        if log is not None:
            log(entry)
    model.heads.eval()
    return TrainResult(model.heads, tuple(history))


__all__ = [
    "ANSWER", "HeadSample", "Prepared", "QUESTION", "StepLog", "TrainConfig", "TrainResult",
    "assert_frozen_untouched", "load_samples", "prepare", "train_heads",
]
