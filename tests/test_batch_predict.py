"""Many expressions of one video in one pass (`Sa2VA.ground_batch` / `track_batch` /
`predict_batch`, and `refsav predict --batch-size`) against one expression at a time.

The reference here is the one-expression path written out as it was before batching:
`llm_inputs` with the pixels, one `generate` (or one teacher-forced forward) whose
last-layer states at the [SEG] tokens feed `text_hidden_fcs`, then SAM-2 per
expression. On CPU float32 the batched results must be the same bit for bit
(text, [SEG] embeddings, masks), on the InternVL and both Qwen tiny families.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
import test_model
from transformers import GenerationConfig, LogitsProcessorList

import refsav.cli as root_cli
import refsav.model.predict as mp
from refsav.model.checkpoint import load_sa2va
from refsav.model.cli import model_group
from refsav.model.config import PredictOptions
from refsav.model.preprocess import to_pil
from refsav.model.sa2va import append_answer, capture_last_hidden, seg_rows
from refsav.pipelines.sample import EVAL, SampleConfig, write_sample
from refsav.schemas.errors import RefsavError

EXPRESSIONS = ["the red ball", "a man riding a horse on the left side", "x", "the cat", "two dogs near the gate"]
TEXTS = [f"<image>\nPlease segment {e}." for e in EXPRESSIONS]
# Different lengths (so left padding matters), two [SEG], and none.
ANSWERS = ["Sure, [SEG].", "[SEG]", "It is [SEG] and [SEG] there.", "No.", "Sure, [SEG]."]
OPTS = PredictOptions(num_key_frames=2, max_new_tokens=8)

# Fixtures shared with tests/test_model.py: one torch thread, the tiny InternVL Sa2VA folder.
one_thread = test_model.one_thread
tiny_dir = test_model.tiny_dir


@pytest.fixture(scope="module", params=["internvl", "qwen2.5-vl", "qwen3-vl"])
def family(request, tiny_dir, tmp_path_factory):
    if request.param == "internvl":
        return load_sa2va(tiny_dir)
    out = tmp_path_factory.mktemp("batch") / request.param
    result = CliRunner().invoke(model_group, ["init-random", "--base", request.param, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return load_sa2va(out)


@pytest.fixture(scope="module")
def video():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (40, 56, 3), dtype=np.uint8) for _ in range(4)]


class SegAfterAssistant:
    """Greedy decoding with [SEG] forced as the second answer token. It reads only the
    row's own tokens (after its last `<|im_start|>assistant\\n`), so batching and
    padding cannot change what it forces; the other tokens are the model's argmax."""

    def __init__(self, tokenizer):
        self.start = tokenizer.convert_tokens_to_ids("<|im_start|>")
        self.seg = tokenizer.convert_tokens_to_ids("[SEG]")
        self.header = len(tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False))

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        for b, row in enumerate(input_ids.tolist()):
            last = max(i for i, t in enumerate(row) if t == self.start)
            if len(row) - last == self.header + 1:
                scores[b] = -1e9
                scores[b, self.seg] = 0.0
        return scores


def one_at_a_time(sa2va, text, video, *, answer=None, logits_processor=None, track=True):
    """The single-expression path as it was before batching; returns (answer ids,
    [SEG] embeddings, masks (n, T, H, W)). Generated answers take their [SEG] states
    from `generate`'s own decoding steps."""
    keys = tuple(range(OPTS.num_key_frames))
    inputs = sa2va.llm_inputs(text, [to_pil(video[k]) for k in keys], is_video=True)
    prompt_len = inputs["input_ids"].shape[1]
    vlm = sa2va.model.vlm
    with torch.no_grad(), capture_last_hidden(sa2va.model) as states:
        if answer is not None:
            ans = torch.tensor([sa2va.tokenizer.encode(answer, add_special_tokens=False)])
            full = append_answer(inputs, ans)
            vlm(**full, use_cache=False, logits_to_keep=1)
            sequence = full["input_ids"][0].tolist()
        else:
            pad = sa2va.tokenizer.pad_token_id if sa2va.tokenizer.pad_token_id is not None else sa2va.stop_ids[0]
            gen = GenerationConfig(max_new_tokens=OPTS.max_new_tokens, do_sample=False, num_beams=1,
                                   eos_token_id=sa2va.stop_ids, pad_token_id=pad)
            sequence = vlm.generate(**inputs, generation_config=gen, logits_processor=logits_processor)[0].tolist()
        hidden = torch.cat(states, dim=1)[0]
        rows = seg_rows(sequence[: hidden.shape[0]], sa2va.seg_id, prompt_len)
        prompts = sa2va.model.seg_prompts(hidden[rows].float())
    masks = np.zeros((len(rows), len(video), *video[0].shape[:2]), dtype=bool) if track else None
    if rows and track:
        for i, m in sa2va.track_masks(video, prompts, keys, OPTS):
            masks[:, i] = m
    return tuple(sequence[prompt_len:]), prompts[:, 0].float(), masks


def assert_same(pred, ref, *, exact_embeddings=True):
    ids, emb, masks = ref
    assert pred.answer_ids == ids
    assert len(pred.masks) == emb.shape[0] == pred.seg_embeddings.shape[0]
    if exact_embeddings:
        assert torch.equal(pred.seg_embeddings, emb)
    else:
        assert torch.allclose(pred.seg_embeddings, emb, rtol=0, atol=1e-6)
    if masks is not None:  # references made with track=False carry no masks
        assert all(np.array_equal(a, b) for a, b in zip(pred.masks, masks))


def test_forced_answers_equal_one_at_a_time_bit_for_bit(family, video):
    refs = [one_at_a_time(family, t, video, answer=a) for t, a in zip(TEXTS, ANSWERS)]
    assert [r[1].shape[0] for r in refs] == [1, 1, 2, 0, 1]
    preds = family.predict_batch(TEXTS, video=video, answers=ANSWERS,
                                 options=PredictOptions(num_key_frames=2, batch_size=2))
    assert [p.text for p in preds] == ANSWERS
    for pred, ref in zip(preds, refs):
        assert_same(pred, ref)
        assert pred.key_frames == (0, 1)
    # All objects of the video in one SAM-2 batch: the same masks up to pixels whose
    # logits sit within float rounding of the threshold.
    groundings = family.ground_batch(TEXTS, video=video, answers=ANSWERS, options=PredictOptions(num_key_frames=2))
    frames = list(family.track_batch(video, groundings, OPTS, one_sam2_batch=True))
    for k, ref in enumerate(refs):
        got = np.stack([f[k] for _, f in frames], axis=1)
        assert got.shape == ref[2].shape and (got.size == 0 or (got == ref[2]).mean() > 0.9999)
    # The batch size reaches only the LLM half; SAM-2 gets the same prompts whatever it is.
    for batch_size in (1, 8):
        groundings = family.ground_batch(TEXTS, video=video, answers=ANSWERS,
                                         options=PredictOptions(num_key_frames=2, batch_size=batch_size))
        for g, pred in zip(groundings, preds):
            assert torch.equal(family.model.seg_prompts(g.seg_hidden)[:, 0], pred.seg_embeddings)


def test_generated_answers_batch_size_changes_nothing(family, video):
    force = LogitsProcessorList([SegAfterAssistant(family.tokenizer)])

    def opts(batch_size):
        return PredictOptions(num_key_frames=2, max_new_tokens=8, batch_size=batch_size)

    runs = {bs: family.ground_batch(TEXTS, video=video, logits_processor=force, options=opts(bs)) for bs in (1, 3, 8)}
    for bs in (3, 8):
        for a, b in zip(runs[1], runs[bs]):
            assert a.text == b.text and a.answer_ids == b.answer_ids
            assert torch.equal(a.seg_hidden, b.seg_hidden)
    assert all(family.seg_id in g.answer_ids[:-1] for g in runs[1])  # every answer reached SAM-2
    # Against unbatched `generate`: the same tokens; its decoding-step [SEG] states
    # differ from the teacher-forced ones in the last float bits only, the masks not at all.
    preds = family.predict_batch(TEXTS, video=video, logits_processor=force, options=opts(8))
    for k, (text, pred, g) in enumerate(zip(TEXTS, preds, runs[1])):
        assert pred.answer_ids == g.answer_ids
        ref = one_at_a_time(family, text, video, logits_processor=force, track=k < 2)
        assert_same(pred, ref, exact_embeddings=False)


def test_vision_tower_and_sam2_encoder_run_once_per_video(tiny_dir, video):
    sa2va = load_sa2va(tiny_dir)
    calls = {"vit": 0, "sam2": 0}

    def count(name):
        def hook(*_):
            calls[name] += 1
        return hook

    hooks = [sa2va.model.vlm.model.vision_tower.register_forward_hook(count("vit")),
             sa2va.model.grounding_encoder.sam2_model.image_encoder.register_forward_hook(count("sam2"))]
    try:
        force = LogitsProcessorList([SegAfterAssistant(sa2va.tokenizer)])
        preds = sa2va.predict_batch(TEXTS, video=video, logits_processor=force,
                                    options=PredictOptions(num_key_frames=2, max_new_tokens=4, batch_size=2))
    finally:
        for h in hooks:
            h.remove()
    assert sum(len(p.masks) for p in preds) == len(TEXTS)
    # Three generate batches and five teacher-forced passes, yet one ViT call; one
    # SAM-2 image-encoder call per frame for five objects.
    assert calls == {"vit": 1, "sam2": len(video)}


def test_tracking_streams_and_keeps_bounded_memory(tiny_dir):
    sa2va = load_sa2va(tiny_dir)
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 255, (32, 48, 3), dtype=np.uint8) for _ in range(10)]
    read = []

    class Frames(list):
        def __getitem__(self, i):
            read.append(i)
            return list.__getitem__(self, i)

    clip = Frames(frames)
    opts = PredictOptions(num_key_frames=2)
    groundings = sa2va.ground_batch(TEXTS, video=clip, answers=ANSWERS, options=opts)
    read.clear()
    stream = sa2va.track_batch(clip, groundings, opts, first_seg_only=True)
    i, first = next(stream)
    assert i == 0 and [m.shape for m in first] == [(1, 32, 48)] * 3 + [(0, 32, 48), (1, 32, 48)]
    assert max(read) < 8  # frames are read as SAM-2 reaches them (key frames + a few prefetched)
    rest = list(stream)
    assert [j for j, _ in rest] == list(range(1, 10))
    enc = sa2va.model.grounding_encoder
    assert enc.last_track_stats["max_bank_entries"] <= enc._history()


def test_image_prompts_in_one_batch(tiny_dir):
    sa2va = load_sa2va(tiny_dir)
    image = np.random.default_rng(4).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    preds = sa2va.predict_batch(TEXTS, image=image, answers=ANSWERS, options=PredictOptions(batch_size=2))
    for text, answer, pred in zip(TEXTS, ANSWERS, preds):
        single = sa2va.predict(text, image=image, answer=answer)
        assert pred.text == single.text and torch.equal(pred.seg_embeddings, single.seg_embeddings)
        assert len(pred.masks) == len(single.masks)
        assert all(a.shape == (1, 50, 70) and np.array_equal(a, b) for a, b in zip(pred.masks, single.masks))


def test_bfloat16_batched_within_tolerance(tiny_dir, video):
    half = load_sa2va(tiny_dir, dtype=torch.bfloat16)
    opts = PredictOptions(num_key_frames=2, batch_size=8)
    preds = half.predict_batch(TEXTS, video=video, answers=ANSWERS, options=opts)
    for text, answer, pred in zip(TEXTS, ANSWERS, preds):
        single = half.predict(text, video=video, answer=answer, options=opts)
        assert pred.text == single.text
        # The LLM pass is per prompt in both: equal; SAM-2 under bf16 autocast with
        # five objects instead of one or two may round differently.
        assert torch.equal(pred.seg_embeddings, single.seg_embeddings)
        for a, b in zip(pred.masks, single.masks):
            assert (a == b).mean() > 0.99


def test_bad_batches_are_one_line_errors(tiny_dir, video):
    sa2va = load_sa2va(tiny_dir)
    assert sa2va.predict_batch([], video=video) == []
    with pytest.raises(RefsavError, match="2 answers for 1 prompts"):
        sa2va.ground_batch(TEXTS[:1], video=video, answers=["[SEG]", "[SEG]"])
    with pytest.raises(RefsavError, match="batch_size"):
        PredictOptions(batch_size=0)
    with pytest.raises(RefsavError, match="exactly one of image or video"):
        sa2va.predict_batch(TEXTS, answers=ANSWERS)


# ----------------------------------------------------------------------------- refsav predict


@pytest.fixture(scope="module")
def gt(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    write_sample(root, SampleConfig(videos=2, width=64, height=48, frames=4, objects=3), show_progress=False)
    return root / EVAL


class OneAtATime:
    """The model without the batched API: `predict_video` then runs its
    one-expression-at-a-time loop, as before batching."""

    def __init__(self, sa2va):
        self.predict = sa2va.predict


def test_predict_results_equal_one_expression_at_a_time(tiny_dir, gt, tmp_path, monkeypatch):
    def run(name, *extra):
        out = tmp_path / name
        args = ["predict", "--model", tiny_dir, "--protocol", "refsav", "--gt", gt, "--out", out, "--dtype", "fp32",
                "--force-answer", "Sure, [SEG].", "--num-key-frames", "2", *extra]
        assert root_cli.main([str(a) for a in args]) == 0
        return out

    batched = run("b8")
    single = run("b1", "--batch-size", "1")
    model = mp.get_model(mp.RunSpec(str(tiny_dir.resolve()), "refsav"))
    monkeypatch.setattr(mp, "get_model", lambda spec: OneAtATime(model))
    loop = run("loop")
    expected = (loop / "results.json").read_bytes()
    assert (batched / "results.json").read_bytes() == expected
    assert (single / "results.json").read_bytes() == expected
    results = json.loads(expected)
    assert sum(len(v) for v in results.values()) >= 4  # several expressions per video
    # The batch size is no setting of the results: a run resumes under another one.
    assert json.loads((batched / "run.json").read_text()) == json.loads((single / "run.json").read_text())
    assert "batch_size" not in json.loads((batched / "run.json").read_text())


def test_gpu_benchmark_batching_variant_runs_on_cpu(tiny_dir):
    """perf/bench_model_gpu.py --expressions: its batched vs one-at-a-time timing, on CPU."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "perf" / "bench_model_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_model_gpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    row = bench.time_batching(load_sa2va(tiny_dir), "internvl-tiny", bench.SyntheticVideo(3, 32, 40), 3, "first", 1,
                              lambda: None, False)
    assert row["frames"] == 3 and row["expressions"] == 3 and row["masks_equal"] == "yes"
    # One SAM-2 batch for all objects may flip pixels within float rounding of the threshold.
    assert row["one_batch_s"] > 0 and (row["one_batch_equal"] == "yes" or row["one_batch_equal"].endswith("differ"))
    assert row["single_s"] > 0 and row["batched_s"] > 0
