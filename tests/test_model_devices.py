"""Sa2VA / DeSa2VA on each (device, dtype) the benchmark runs: CPU bf16 here, CUDA
bf16 and fp32 where a GPU is present (skipped otherwise).

Each case loads test_model's tiny random checkpoint through `load_sa2va` onto that
device and dtype and checks: image masks (count, shape, dtype, determinism, the
[SEG] path), agreement with a float32 CPU reference, video tracking with both
key-frame modes, DeSa2VA at α = 1 = Sa2VA, and where the weights live. On CUDA the
peak memory is printed: run with `-rP` to see it (`pytest -rP -k cuda ...`).

CPU bf16 matmuls are emulated on machines without native bf16 (about 10x slower
than fp32 here), and SAM-2's image encoder dominates: 3 s per frame at the tiny
checkpoint's 256 px. The CPU case therefore loads a copy of the checkpoint whose
config runs SAM-2 at 128 px (same weights: no SAM-2 parameter depends on the input
size; test_model's tracking test uses 128 px too); CUDA cases use it unchanged.
"""
from __future__ import annotations

import gc
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from refsav.model.checkpoint import load_sa2va
from refsav.model.config import PredictOptions
from refsav.model.desa2va import DeSa2VA
from refsav.model.sa2va import Sa2VA, Sa2VAPrediction, append_answer
from refsav.model.preprocess import to_pil
from refsav.schemas.io import atomic_write_json
from test_model import PROMPT, one_thread, tiny_dir  # noqa: F401 - fixtures: one torch thread, a tiny Sa2VA

NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CASES = [
    pytest.param(("cpu", torch.bfloat16), id="cpu-bf16"),
    pytest.param(("cuda", torch.bfloat16), id="cuda-bf16", marks=NEEDS_CUDA),
    pytest.param(("cuda", torch.float32), id="cuda-fp32", marks=NEEDS_CUDA),
]
SAM_SIZE = {"cpu": 128, "cuda": 256}  # see the module docstring

TWO_SEG = "Sure, [SEG] and [SEG]."
ONE_SEG = "Sure, [SEG]."
FRAMES = 6
KEY_FRAMES = {"first": (0, 1), "uniform": (0, 5)}  # 2 key frames of 6

# Agreement with the float32 CPU reference. Measured on CPU bf16 (9 images x 2 [SEG],
# four 6-frame videos; SAM-2 at 128 and 256 px): mask IoU (the worse of foreground and
# background) >= 0.985 on images and >= 0.981 on every video frame (propagation
# compounds the rounding), [SEG] embedding cosine >= 0.99996, SAM-2 low-res logits
# max |delta| <= 1.8 % of max |logit|. The random model's logits are small (|logit|
# ~ 0.07), so every flipped pixel sits at the decision boundary. The thresholds
# allow 3-4x the measured disagreement, for CUDA's different bf16 kernels (and TF32
# convolutions in the fp32 case).
IMAGE_IOU_MIN = 0.95
VIDEO_IOU_MIN = 0.93
EMBED_COS_MIN = 0.999
LOGIT_REL_MAX = 0.06


@dataclass(frozen=True)
class Case:
    device: str
    dtype: torch.dtype
    model: Sa2VA  # on `device` in `dtype`
    reference: Sa2VA  # the same checkpoint, float32 on CPU


@pytest.fixture(scope="module", params=CASES)
def case(request, tiny_dir, tmp_path_factory) -> Case:
    device, dtype = request.param
    folder = Path(tiny_dir)
    if SAM_SIZE[device] != json.loads((folder / "config.json").read_text())["refsav"]["sam2"]["image_size"]:
        folder = tmp_path_factory.mktemp("sa2va") / f"tiny{SAM_SIZE[device]}"
        shutil.copytree(tiny_dir, folder)
        raw = json.loads((folder / "config.json").read_text())
        raw["refsav"]["sam2"]["image_size"] = SAM_SIZE[device]
        atomic_write_json(folder / "config.json", raw, indent=2)
    if device == "cuda":
        gc.collect()  # the previous case's model, so this case's peak is its own
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = load_sa2va(folder, dtype=dtype, device=device)
    assert model.load_report.ok
    return Case(device, dtype, model, load_sa2va(folder))


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def video():
    rng = np.random.default_rng(1)
    return [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(FRAMES)]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """The worse of foreground and background IoU: a mask covering most of the frame
    (the random model's are ~70 %) cannot pass on its foreground alone."""
    def one(x, y):
        union = np.logical_or(x, y).sum()
        return 1.0 if union == 0 else float(np.logical_and(x, y).sum() / union)

    return min(one(a, b), one(~a, ~b))


@dataclass(frozen=True)
class DecoderIO:
    """What SAM-2's mask decoder received and returned during one prediction."""

    sparse: list[torch.Tensor]  # per call (B, 3, 256): two padding tokens, then the [SEG] prompt
    low_res: list[torch.Tensor]  # per call (B, 1, 4h, 4w) mask logits


def _predict_watching_decoder(sa2va: Sa2VA, **kwargs) -> tuple[Sa2VAPrediction, DecoderIO]:
    io = DecoderIO([], [])
    decoder = sa2va.model.grounding_encoder.sam2_model.sam_mask_decoder
    hooks = [
        decoder.register_forward_pre_hook(
            lambda _m, _a, kw: io.sparse.append(kw["sparse_prompt_embeddings"].detach().clone()), with_kwargs=True),
        decoder.register_forward_hook(lambda _m, _a, out: io.low_res.append(out[0].detach().clone())),
    ]
    try:
        return sa2va.predict(PROMPT, **kwargs), io
    finally:
        for h in hooks:
            h.remove()


@pytest.fixture(scope="module")
def image_runs(case, image):
    """Two independent two-[SEG] image predictions on the device, one on the reference."""
    return (_predict_watching_decoder(case.model, image=image, answer=TWO_SEG),
            _predict_watching_decoder(case.model, image=image, answer=TWO_SEG),
            _predict_watching_decoder(case.reference, image=image, answer=TWO_SEG))


@dataclass(frozen=True)
class VideoRun:
    pred: Sa2VAPrediction
    memory: list[tuple[torch.device, int]]  # per memory-attention call: where the bank was, its tokens
    stats: dict


@pytest.fixture(scope="module")
def video_runs(case, video):
    """One prediction per key-frame mode, recording SAM-2's memory attention inputs."""
    runs = {}
    sam = case.model.model.grounding_encoder.sam2_model
    for mode in KEY_FRAMES:
        memory = []
        hook = sam.memory_attention.register_forward_pre_hook(
            lambda _m, _a, kw: memory.append((kw["memory"].device, kw["memory"].shape[0])), with_kwargs=True)
        try:
            pred = case.model.predict(PROMPT, video=video, answer=ONE_SEG,
                                      options=PredictOptions(key_frames=mode, num_key_frames=2))
        finally:
            hook.remove()
        runs[mode] = VideoRun(pred, memory, dict(case.model.model.grounding_encoder.last_track_stats))
    return runs


# ----------------------------------------------------------------------------- images


def test_image_masks_shape_dtype_and_determinism(case, image, image_runs):
    (a, _), (b, _), _ = image_runs
    for pred in (a, b):
        assert pred.text == TWO_SEG
        assert len(pred.masks) == 2 and all(m.shape == (1, 90, 120) and m.dtype == np.bool_ for m in pred.masks)
        assert pred.seg_embeddings.shape == (2, 256) and pred.seg_embeddings.dtype == torch.float32
        assert pred.seg_embeddings.device.type == "cpu"
    # Determinism: same inputs, same bits, on every device.
    assert torch.equal(a.seg_embeddings, b.seg_embeddings)
    assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))
    one = case.model.predict(PROMPT, image=image, answer=ONE_SEG)
    assert len(one.masks) == 1 and one.masks[0].shape == (1, 90, 120)
    none = case.model.predict(PROMPT, image=image, answer="There is no ball.")
    assert none.masks == () and none.seg_embeddings.shape == (0, 256)


def test_seg_positions_drive_the_mask_path(case, image, image_runs):
    (pred, io), _, _ = image_runs
    sa2va = case.model
    # The [SEG] rows of a plain forward over prompt + answer, through text_hidden_fcs,
    # on the device: the prediction's embeddings.
    inputs = sa2va.llm_inputs(PROMPT, [to_pil(image)], is_video=False)
    answer = torch.tensor([sa2va.tokenizer.encode(TWO_SEG, add_special_tokens=False)], device=case.device)
    full = append_answer(inputs, answer)
    assert all(v.device.type == case.device for v in full.values())
    assert full["pixel_values"].dtype == case.dtype
    with torch.no_grad():
        hidden = sa2va.model.vlm.model(**full).last_hidden_state[0]
        expected = sa2va.model.text_hidden_fcs(hidden[full["input_ids"][0] == sa2va.seg_id])
    assert expected.device.type == case.device and expected.dtype == case.dtype
    # Same inputs and kernels as `ground` (bit-equal on CPU bf16); the tolerance is
    # about two bf16 steps of these embeddings (|x| <= ~0.05), while the two [SEG]
    # rows differ by ~4x that.
    tol = 0.01 * float(pred.seg_embeddings.detach().abs().max())
    assert torch.allclose(pred.seg_embeddings, expected.float().cpu(), rtol=0.0, atol=tol)
    # Two [SEG] positions, two different prompts.
    assert not torch.allclose(pred.seg_embeddings[0], pred.seg_embeddings[1], rtol=0.0, atol=tol)
    # One decoder call for both objects, on the device, each row prompted by its own
    # [SEG] embedding as the third sparse token.
    assert len(io.sparse) == 1 and io.sparse[0].shape == (2, 3, 256)
    assert io.sparse[0].device.type == case.device
    assert torch.equal(io.sparse[0][:, 2].float().cpu(), pred.seg_embeddings)


def test_masks_agree_with_float32_cpu_reference(case, image_runs):
    (pred, io), _, (ref, ref_io) = image_runs
    cos = torch.nn.functional.cosine_similarity(pred.seg_embeddings, ref.seg_embeddings)
    assert bool((cos > EMBED_COS_MIN).all()), cos
    for got, want in zip(pred.masks, ref.masks):
        assert 0.05 < want.mean() < 0.95  # a non-trivial mask, or IoU says nothing
        assert _iou(got, want) > IMAGE_IOU_MIN, _iou(got, want)
    low, ref_low = io.low_res[0].float().cpu(), ref_io.low_res[0]
    assert low.shape == ref_low.shape
    rel = ((low - ref_low).abs().max() / ref_low.abs().max()).item()
    assert rel < LOGIT_REL_MAX, rel


# ----------------------------------------------------------------------------- video


def test_video_masklets_memory_and_key_frame_modes(case, video, video_runs):
    sam_size = case.model.model.grounding_encoder.image_size
    for mode, keys in KEY_FRAMES.items():
        run = video_runs[mode]
        assert run.pred.key_frames == keys
        assert len(run.pred.masks) == 1 and run.pred.masks[0].shape == (FRAMES, 48, 64)
        assert run.pred.masks[0].dtype == np.bool_
        # Streaming: every frame went through SAM-2; each non-key frame attended to a
        # memory bank held on the device, growing by one frame's memory (+ pointer)
        # per step (6 frames stay below SAM-2's 7-frame memory window).
        assert run.stats["frames"] == FRAMES and run.stats["max_bank_entries"] == FRAMES - len(keys)
        assert len(run.memory) == FRAMES - len(keys)
        assert all(dev.type == case.device for dev, _ in run.memory)
        sizes = [n for _, n in run.memory]
        assert all(b - a > (sam_size // 16) ** 2 for a, b in zip(sizes, sizes[1:])), sizes
        # Key frames take the [SEG] prompt without memory: exactly the single-image mask of
        # the frame normalised as video frames are (a still image is normalised in bf16).
        prompts = run.pred.seg_embeddings[:, None].to(device=case.device, dtype=case.dtype)
        for k in keys:
            single = case.model.segment_image(video[k], prompts, video_frame=True)[0]
            assert np.array_equal(run.pred.masks[0][k], single)
    # Different frames shown to the LLM: different [SEG] states; and uniform's last key
    # frame is prompted, not propagated, so the masklets differ there.
    first, uniform = video_runs["first"].pred, video_runs["uniform"].pred
    assert not torch.allclose(first.seg_embeddings, uniform.seg_embeddings)
    assert not np.array_equal(first.masks[0][5], uniform.masks[0][5])


def test_video_agrees_with_float32_cpu_reference(case, video, video_runs):
    pred = video_runs["first"].pred
    ref = case.reference.predict(PROMPT, video=video, answer=ONE_SEG, options=PredictOptions(num_key_frames=2))
    assert ref.key_frames == pred.key_frames
    ious = [_iou(a, b) for a, b in zip(pred.masks[0], ref.masks[0])]
    assert min(ious) > VIDEO_IOU_MIN, ious


# ----------------------------------------------------------------------------- DeSa2VA


def test_desa2va_at_alpha_one_is_sa2va(case, image, image_runs, video, video_runs):
    heads = DeSa2VA.from_sa2va(case.model, seed=4).heads
    with torch.no_grad():
        heads.gate.weight.zero_()
        heads.gate.bias.fill_(40.0)  # sigmoid(40) == 1.0 in float32 and bf16
    model = DeSa2VA.with_heads(case.model, heads, dtype=case.dtype)
    assert all(p.device.type == case.device and p.dtype == case.dtype for p in model.heads.parameters())

    (sa2va_image, _), _, _ = image_runs
    got = model.predict(PROMPT, image=image, answer=TWO_SEG)
    assert got.alpha.tolist() == [1.0, 1.0]
    assert all(np.array_equal(a, b) for a, b in zip(got.masks, sa2va_image.masks))

    sa2va_video = video_runs["first"].pred
    got = model.predict(PROMPT, video=video, answer=ONE_SEG, options=PredictOptions(num_key_frames=2))
    assert got.alpha.tolist() == [1.0] and got.key_frames == sa2va_video.key_frames
    assert np.array_equal(got.masks[0], sa2va_video.masks[0])  # key frames and propagated ones


# ----------------------------------------------------------------------------- placement


def test_weights_live_on_the_device_and_peak_memory(case, image):
    model = case.model.model
    assert all(t.device.type == case.device for t in model.parameters())
    assert all(t.device.type == case.device for t in model.buffers())
    sam = model.grounding_encoder
    sam_ids = {id(p) for p in sam.parameters()}
    # The VLM and the [SEG] projection hold `dtype`; SAM-2 keeps float32 weights and
    # computes under autocast in `dtype` (sam2_wrapper.GroundingEncoder).
    assert all(p.dtype == case.dtype for p in model.parameters() if id(p) not in sam_ids)
    assert all(p.dtype == torch.float32 for p in sam.parameters())
    assert sam.compute_dtype == case.dtype and model.dtype == case.dtype
    if case.device == "cuda":
        case.model.predict(PROMPT, image=image, answer=ONE_SEG)
        torch.cuda.synchronize()
        peak, now = torch.cuda.max_memory_allocated(), torch.cuda.memory_allocated()
        weights = sum({t.data_ptr(): t.numel() * t.element_size() for t in model.state_dict().values()}.values())
        print(f"{torch.cuda.get_device_name()} {case.dtype}: max_memory_allocated {peak / 2**20:.1f} MiB "
              f"(since load, over this case's tests), allocated now {now / 2**20:.1f} MiB, "
              f"weights {weights / 2**20:.1f} MiB")
        assert peak >= now >= weights
