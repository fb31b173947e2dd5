"""DeSa2VA (our implementation of the paper's description) on a tiny random Sa2VA.

The Sa2VA model is test_model's tiny random checkpoint (written by `refsav model
init-random`); the training data is a synthetic `refsav annotate` output
(annotated_fixture.build_annotated): real mp4s, SA-V masklets and Expression rows.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from annotated_fixture import build_annotated
from refsav.model.config import PredictOptions
from refsav.model.desa2va import (
    DeSa2VA, DeSa2VAConfig, DecoupleHeads, bce_loss, dice_loss, fuse_logits, load_heads, mask_loss, save_heads,
    triple_loss,
)
from refsav.model.preprocess import sam2_pixels, to_pil
from refsav.model.sam2_wrapper import upsample_logits
from refsav.model.train_heads import TrainConfig, load_samples, prepare, train_heads
from refsav.schemas.errors import SchemaError
from test_model import PROMPT, one_thread, tiny, tiny_dir  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(3).integers(0, 255, (72, 96, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    return build_annotated(tmp_path_factory.mktemp("desa2va"), videos=2, objects=2, frames=8, width=96, height=64)


# ----------------------------------------------------------------------------- pure pieces


def test_bce_and_dice_match_hand_computed_values():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 3.0]])[None]  # (1, 2, 2)
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])[None]
    sp = lambda x: math.log1p(math.exp(x))  # softplus: BCE(z, 1) = sp(-z), BCE(z, 0) = sp(z)
    bce = (sp(-0.0) + sp(2.0) + sp(-1.0) + sp(-3.0)) / 4
    assert bce_loss(logits, target).item() == pytest.approx(bce, rel=1e-6)
    sig = lambda x: 1 / (1 + math.exp(-x))
    p = [sig(0.0), sig(2.0), sig(-1.0), sig(3.0)]
    inter = p[0] + p[3]
    dice = 1 - (2 * inter + 1) / (sum(p) + 2 + 1)
    assert dice_loss(logits, target).item() == pytest.approx(dice, rel=1e-6)
    assert mask_loss(logits, target).item() == pytest.approx(2.0 * bce + 0.5 * dice, rel=1e-6)
    # Dice is averaged per mask: a perfect mask and a fully wrong one give ~0.5.
    two = torch.stack([torch.full((2, 2), 50.0), torch.full((2, 2), -50.0)])
    ones = torch.ones(2, 2, 2)
    assert dice_loss(two, ones).item() == pytest.approx(0.5 * (1 - 1 / 5), abs=1e-6)


def test_fusion_is_a_convex_mix_in_logit_space():
    t, v = torch.randn(2, 4, 4), torch.randn(2, 4, 4)
    f = fuse_logits(t, v, torch.tensor([1.0, 0.25]))
    assert torch.equal(f[0], v[0])
    assert torch.allclose(f[1], 0.25 * v[1] + 0.75 * t[1])


# ----------------------------------------------------------------------------- on the tiny model


def test_shapes_and_vision_path_is_sa2va(tiny, image):
    model = DeSa2VA.from_sa2va(tiny, DeSa2VAConfig(hidden_size=tiny.config.llm_hidden_size, num_points=3))
    ref = tiny.model.text_hidden_fcs.state_dict()
    assert all(torch.equal(model.heads.vision.state_dict()[k], ref[k]) for k in ref)
    assert {n for n, _ in model.named_parameters()} == {f"heads.{n}" for n, _ in model.heads.named_parameters()}

    g = tiny.ground(PROMPT, image=image, answer="Sure, [SEG] and [SEG].")
    h = model.heads(g.seg_hidden)
    assert h.text_token.shape == h.vision_token.shape == (2, 1, 256)
    assert h.points.shape == (2, 3, 2) and bool(((h.points >= 0) & (h.points <= 1)).all())
    assert h.alpha.shape == (2,)
    assert torch.allclose(h.vision_token, tiny.model.seg_prompts(g.seg_hidden), atol=1e-6)

    pred = model.predict_image(PROMPT, image, answer="Sure, [SEG] and [SEG].")
    assert pred.masks.shape == pred.text_masks.shape == pred.vision_masks.shape == (2, 72, 96)
    sa2va_masks = tiny.segment_image(image, tiny.model.seg_prompts(g.seg_hidden))
    assert np.array_equal(pred.vision_masks, sa2va_masks)
    # With the gate saturated towards the vision path, the fused mask is Sa2VA's.
    with torch.no_grad():
        model.heads.gate.weight.zero_()
        model.heads.gate.bias.fill_(40.0)
    pred = model.predict_image(PROMPT, image, answer="Sure, [SEG] and [SEG].")
    assert pred.alpha.tolist() == [1.0, 1.0]
    assert np.array_equal(pred.masks, sa2va_masks)


def test_samples_from_annotate_output(annotated):
    samples = load_samples(annotated.out)
    rows = annotated.expressions
    assert len(samples) == len(rows)  # one visible annotated frame per kept masklet
    by_key = {(r.video_id, r.object_id): r for r in rows}
    for s in samples:
        assert s.text == by_key[(s.video_id, s.object_id)].formated
        assert s.image.shape == (64, 96, 3) and s.mask.shape == (64, 96) and s.mask.any()
        assert s.frame_index % 4 == 0
    short = load_samples(annotated.out, text="short", frames_per_object=2)
    assert len(short) == 2 * len(rows)
    assert short[0].text == by_key[(short[0].video_id, short[0].object_id)].short_caps[0]
    bad = annotated.out.parent / "empty"
    (bad / "data").mkdir(parents=True)
    (bad / "run.json").write_text('{"input": "/nowhere"}')
    with pytest.raises(SchemaError, match="no Parquet shards"):
        load_samples(bad)


def test_heads_train_frozen_parts_stay_identical(tiny, annotated, tmp_path):
    model = DeSa2VA.from_sa2va(tiny, seed=1)
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    data = prepare(model, load_samples(annotated.out, text="short")[:3])
    # One copy of SAM-2's position encodings serves every sample (they depend on sizes only).
    assert all(d.features.vision_pos is data[0].features.vision_pos for d in data)
    first = triple_loss(model.forward_features(data[0].seg_hidden, data[0].features), data[0].target, model.config)
    assert all(t.requires_grad for t in (first.text, first.vision, first.fused))
    result = train_heads(model, data, TrainConfig(steps=40, lr=1e-2, batch_size=3))
    hist = result.history
    assert len(hist) == 40
    start, end = hist[0], hist[-1]
    for term in ("text", "vision", "fused", "total"):
        assert getattr(end, term) < 0.8 * getattr(start, term), (term, getattr(start, term), getattr(end, term))
    after = tiny.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None and not p.requires_grad for p in tiny.model.parameters())
    assert any(p.grad is not None for p in model.heads.parameters())

    path = save_heads(tmp_path / "heads.safetensors", result.heads)
    back = load_heads(path)
    assert back.config == result.heads.config
    a, b = result.heads.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(SchemaError, match="junk.safetensors"):
        load_heads(tmp_path / "junk.safetensors")


def test_decode_is_prompt_frame_without_memory_and_keeps_autograd(tiny, image):
    """The one SAM-2 decoding routine: `prompt_frame` (Sa2VA) is `decode` + memory, under no_grad."""
    enc = tiny.model.grounding_encoder
    ff = enc.encode(sam2_pixels(to_pil(image), enc.image_size)[None])
    feats, pos = ff.frame(0, 2)
    prompts = torch.randn(2, 1, 256, generator=torch.Generator().manual_seed(0), requires_grad=True)
    decoded = enc.decode(feats, pos, ff.feat_sizes, prompts)
    decoded.low_res.square().sum().backward()
    assert prompts.grad is not None and bool(prompts.grad.abs().sum() > 0)
    assert all(p.grad is None for p in enc.parameters())
    out = enc.prompt_frame(feats, pos, ff.feat_sizes, prompts.detach())
    assert not out["pred_masks"].requires_grad and out["maskmem_features"] is not None
    assert torch.equal(out["pred_masks"], decoded.low_res.detach())
    assert torch.equal(out["obj_ptr"], decoded.obj_ptr.detach())


def test_video_fused_key_frames_drive_the_masklet(tiny):
    """Decision 7: fused key frames are the masks and seed SAM-2's memory; α = 1 is Sa2VA."""
    rng = np.random.default_rng(5)
    video = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(5)]
    opts = PredictOptions(num_key_frames=2)
    answer = "Sure, [SEG]."
    model = DeSa2VA.from_sa2va(tiny, seed=2)
    ref = tiny.predict(PROMPT, video=video, options=opts, answer=answer)
    fused = model.predict(PROMPT, video=video, options=opts, answer=answer)
    assert fused.text == ref.text and fused.key_frames == ref.key_frames == (0, 1)
    assert len(fused.masks) == 1 and fused.masks[0].shape == (5, 48, 64) and 0 < fused.alpha[0] < 1

    # A key frame's mask is the fused logits of the two paths decoded on that frame alone.
    g = tiny.ground(PROMPT, video=video, options=opts, answer=answer)
    h = model.heads(g.seg_hidden)
    enc = tiny.model.grounding_encoder
    for k in fused.key_frames:
        ff = enc.encode(sam2_pixels(to_pil(video[k]), enc.image_size)[None])
        feats, pos = ff.frame(0, 1)
        t, v = model.decode_paths(h, feats, pos, ff.feat_sizes)
        want = upsample_logits(fuse_logits(t.low_res, v.low_res, h.alpha), enc.image_size, (48, 64)) > 0
        assert np.array_equal(fused.masks[0][k], want[0].numpy())
    # The other frames propagate from the fused memory, not from Sa2VA's.
    assert not np.array_equal(fused.masks[0][2:], ref.masks[0][2:])

    with torch.no_grad():
        model.heads.gate.weight.zero_()
        model.heads.gate.bias.fill_(40.0)
    saturated = model.predict(PROMPT, video=video, options=opts, answer=answer)
    assert saturated.alpha.tolist() == [1.0]
    assert np.array_equal(saturated.masks[0], ref.masks[0])


def test_heads_for_another_width_are_refused(tiny):
    other = DecoupleHeads(DeSa2VAConfig(hidden_size=tiny.config.llm_hidden_size + 4))
    with pytest.raises(SchemaError, match="hidden size"):
        DeSa2VA.with_heads(tiny, other)


def test_alpha_one_is_sa2va_in_bfloat16_too(tiny_dir, image):
    """`refsav predict` defaults to bf16: heads run in the model's dtype, like text_hidden_fcs."""
    from refsav.model.checkpoint import load_sa2va

    half = load_sa2va(tiny_dir, dtype=torch.bfloat16)
    heads = DeSa2VA.from_sa2va(half, seed=4).heads  # trained (float32) heads ...
    with torch.no_grad():
        heads.gate.weight.zero_()
        heads.gate.bias.fill_(40.0)
    model = DeSa2VA.with_heads(half, heads, dtype=half.model.dtype)  # ... predicting in bf16
    assert model.heads.text[0].weight.dtype == torch.bfloat16
    # An image only: bf16 is slow on CPU, and the vision token is what differed (videos share the code).
    want = half.predict(PROMPT, image=image, answer="Sure, [SEG].")
    got = model.predict(PROMPT, image=image, answer="Sure, [SEG].")
    assert got.alpha.tolist() == [1.0] and np.array_equal(got.masks[0], want.masks[0])
