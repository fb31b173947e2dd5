"""Sa2VA reference model: released layout, strict loading, [SEG] → SAM-2 mask path.

Every model here is a tiny random-weight Sa2VA written by `refsav model init-random`
(transformers' native InternVL classes, a BPE tokenizer trained on the spot, SAM
2.1 Hiera-T at 256 px from Meta's `sam2` package) and read back through the same
loader released checkpoints use.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from refsav.model.checkpoint import (
    CheckpointError, Layout, build_model, fuse, load_sa2va, map_released_key, released_names, save_released,
    split_fused,
)
from refsav.model.cli import model_group
from refsav.model.config import PredictOptions, Sa2VAConfig, Sam2Spec
from refsav.model.preprocess import closest_grid, image_tiles, select_key_frames, to_pil
from refsav.model.config import InternVLImageSpec
from refsav.model.sam2_wrapper import GroundingEncoder
from refsav.schemas.errors import RefsavError, SchemaError

PROMPT = "<image>\nPlease segment the red ball."


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # These models are tiny: on a shared 2-core machine, a second intra-op thread
    # mostly waits for the other (measured 10x slower than one thread).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sa2va") / "tiny"
    result = CliRunner().invoke(model_group, ["init-random", "--size", "tiny", "--base", "internvl", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "random weights" in result.output
    return out


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_sa2va(tiny_dir)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- pure pieces


def test_key_frame_modes():
    assert select_key_frames(20, "first", 5) == (0, 1, 2, 3, 4)
    assert select_key_frames(20, "uniform", 5) == (0, 5, 10, 14, 19)
    # Short videos: every frame is a key frame in both modes.
    assert select_key_frames(3, "first", 5) == select_key_frames(3, "uniform", 5) == (0, 1, 2)
    with pytest.raises(RefsavError, match="key_frames"):
        select_key_frames(10, "middle", 5)
    with pytest.raises(RefsavError, match="key_frames"):
        PredictOptions(key_frames="random")


def test_internvl_tiling_follows_dynamic_preprocess():
    spec = InternVLImageSpec()  # 448-px tiles, 1..12 tiles + thumbnail
    assert closest_grid(896, 448, spec) == (2, 1)
    assert closest_grid(448, 448, spec) == (1, 1)
    # A square ties between 1x1, 2x2, 3x3; a larger grid wins while the image has more
    # than half its pixels: 800^2 > 0.5 * 448^2 * 4 but not * 9; 1000^2 is > both.
    assert closest_grid(800, 800, spec) == (2, 2)
    assert closest_grid(1000, 1000, spec) == (3, 3)
    assert closest_grid(300, 300, spec) == (1, 1)
    from PIL import Image

    tiles = image_tiles(Image.new("RGB", (896, 448)), spec)
    assert len(tiles) == 3 and all(t.size == (448, 448) for t in tiles)  # 2 tiles + thumbnail
    assert len(image_tiles(Image.new("RGB", (448, 448)), spec)) == 1  # no thumbnail for one tile


def test_internlm2_wqkv_split_and_fuse_are_inverse():
    layout = Layout("internvl", internlm2=True, num_heads=4, num_kv_heads=2, head_dim=3)
    hidden = 12
    # Mark each row with (kv group, slot, row in head) so the split can be checked by value.
    w = torch.tensor([[g * 100 + s * 10 + r] * hidden for g in range(2) for s in range(4) for r in range(3)],
                     dtype=torch.float32)
    q, k, v = split_fused("wqkv", w, layout)
    assert q.shape == (4 * 3, hidden) and k.shape == v.shape == (2 * 3, hidden)
    assert q[:, 0].tolist() == [0, 1, 2, 10, 11, 12, 100, 101, 102, 110, 111, 112]  # slots 0..g-1 of each group
    assert k[:, 0].tolist() == [20, 21, 22, 120, 121, 122]
    assert v[:, 0].tolist() == [30, 31, 32, 130, 131, 132]
    assert torch.equal(fuse("wqkv", (q, k, v), layout), w)
    vit = torch.randn(9, 3)
    assert torch.equal(fuse("qkv", split_fused("qkv", vit, layout), layout), vit)
    # Renames from the reference table.
    assert map_released_key("language_model.model.layers.3.feed_forward.w2.weight", layout) == (
        "copy", ("vlm.model.language_model.layers.3.mlp.down_proj.weight",))
    assert map_released_key("language_model.output.weight", layout) == ("copy", ("vlm.lm_head.weight",))
    qwen = Layout("qwen2.5-vl")
    for old_or_new in ("model.visual.blocks.0.attn.qkv.weight", "model.model.visual.blocks.0.attn.qkv.weight"):
        assert map_released_key(old_or_new, qwen) == ("copy", ("vlm.model.visual.blocks.0.attn.qkv.weight",))
    assert map_released_key("model.model.layers.0.mlp.up_proj.weight", qwen)[1] == (
        "vlm.model.language_model.layers.0.mlp.up_proj.weight",)
    assert map_released_key("something.else", qwen) is None


def test_internlm2_llm_names_round_trip():
    """Sa2VA-8B/26B style (InternLM2 LLM): released names ↔ a Llama-shaped module."""
    from refsav.model.checkpoint import plan_load
    from refsav.model.random_init import CHAT_TOKENS, internvl_config, train_tokenizer
    from refsav.model.config import INTERNVL_SPECIAL_TOKENS, SA2VA_SPECIAL_TOKENS

    tok = train_tokenizer(CHAT_TOKENS + INTERNVL_SPECIAL_TOKENS + SA2VA_SPECIAL_TOKENS)
    raw = internvl_config("tiny", tok.get_vocab())
    raw["template"] = "internlm2_chat"
    raw["llm_config"] = {
        "architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "vocab_size": len(tok),
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 1e6, "bias": False,
        "tie_word_embeddings": False,
    }
    raw["refsav"] = {"sam2": {"config": "configs/sam2.1/sam2.1_hiera_t.yaml", "image_size": 256}}
    cfg = Sa2VAConfig.from_released(raw)
    layout = Layout.of(cfg)
    assert layout.internlm2 and (layout.num_heads, layout.num_kv_heads, layout.head_dim) == (4, 2, 16)
    state = build_model(cfg, tok, dtype=torch.float32, device="meta").state_dict()
    names = released_names(state.keys(), layout, tied=False)
    shapes = {}
    for name, (kind, targets) in names.items():
        parts = [torch.empty(state[t].shape, device="meta") for t in targets]
        shapes[name] = tuple(parts[0].shape if kind == "copy" else fuse(kind, parts, layout).shape)
    assert shapes["language_model.model.layers.1.attention.wqkv.weight"] == (2 * (2 + 2) * 16, 64)
    assert shapes["language_model.output.weight"] == (len(tok), 64)
    assert "language_model.model.tok_embeddings.weight" in shapes
    assert "language_model.model.layers.0.feed_forward.w3.weight" in shapes
    plan = plan_load(shapes, {k: tuple(v.shape) for k, v in state.items()}, layout)
    assert plan.report.ok and plan.report.loaded == len(shapes)


def test_sa2va_1b_released_layout_and_shapes():
    """Key names and shapes of a Sa2VA-1B checkpoint (docs/sa2va-checkpoints.md §3), from a meta-device skeleton."""
    from refsav.model.random_init import CHAT_TOKENS, internvl_config, train_tokenizer
    from refsav.model.config import INTERNVL_SPECIAL_TOKENS, SA2VA_SPECIAL_TOKENS

    cfg = Sa2VAConfig.from_released(internvl_config("1b"))
    assert cfg.sam2 == Sam2Spec()  # released: SAM 2.0 Hiera-L at 1024
    tok = train_tokenizer(CHAT_TOKENS + INTERNVL_SPECIAL_TOKENS + SA2VA_SPECIAL_TOKENS)
    model = build_model(cfg, tok, dtype=torch.float32, device="meta", tied=True)
    state = model.state_dict()
    names = released_names(state.keys(), Layout.of(cfg), tied=True)

    def shape(key):
        kind, targets = names[key]
        parts = [torch.empty(state[t].shape, device="meta") for t in targets]
        return tuple(parts[0].shape if kind == "copy" else fuse(kind, parts, Layout.of(cfg)).shape)

    assert sum(k.startswith("grounding_encoder.sam2_model.") for k in names) == 900
    assert "grounding_encoder.sam2_model.memory_encoder.fuser.layers.1.g_weight" in names
    assert not any(k.endswith(".gamma") for k in names)
    assert "language_model.lm_head.weight" not in names  # tied, as in the 4.05 GB release
    expected = {
        "vision_model.embeddings.class_embedding": (1, 1, 1024),
        "vision_model.embeddings.position_embedding": (1, 1025, 1024),
        "vision_model.embeddings.patch_embedding.weight": (1024, 3, 14, 14),
        "vision_model.encoder.layers.23.attn.qkv.weight": (3072, 1024),
        "vision_model.encoder.layers.0.ls1": (1024,),
        "mlp1.0.weight": (4096,),
        "mlp1.1.weight": (896, 4096),
        "mlp1.3.weight": (896, 896),
        "language_model.model.embed_tokens.weight": (151679, 896),
        "language_model.model.layers.23.self_attn.k_proj.weight": (128, 896),
        "text_hidden_fcs.0.weight": (896, 896),
        "text_hidden_fcs.2.weight": (256, 896),
        "grounding_encoder.sam2_model.maskmem_tpos_enc": (7, 1, 1, 64),
        "grounding_encoder.sam2_model.image_encoder.trunk.pos_embed": (1, 144, 7, 7),
        "grounding_encoder.sam2_model.sam_mask_decoder.mask_tokens.weight": (4, 256),
    }
    assert {k: shape(k) for k in expected} == expected


# ----------------------------------------------------------------------------- checkpoints


def test_round_trip_through_released_layout(tiny_dir, tiny, tmp_path):
    assert tiny.load_report.ok and tiny.load_report.loaded > 0
    raw = json.loads((tiny_dir / "config.json").read_text())
    assert raw["model_type"] == "sa2va_chat" and raw["template"] == "qwen_chat"
    assert raw["refsav"]["sam2"] == {"config": "configs/sam2.1/sam2.1_hiera_t.yaml", "image_size": 256}
    original = load_file(str(tiny_dir / "model.safetensors"))
    assert "vision_model.encoder.layers.0.attn.qkv.weight" in original
    assert "language_model.lm_head.weight" in original  # the tiny LLM does not tie

    out = save_released(tiny, tmp_path / "again")
    again = load_file(str(out / "model.safetensors"))
    assert again.keys() == original.keys()
    assert all(torch.equal(again[k], original[k]) for k in original)
    assert json.loads((out / "config.json").read_text()) == raw
    # Loading is deterministic: a second load gives the same tensors.
    reloaded = load_sa2va(out)
    a, b = tiny.model.state_dict(), reloaded.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _copy_with(src, dst, tensors=None, config=None):
    shutil.copytree(src, dst)
    if tensors is not None:
        save_file(tensors, str(dst / "model.safetensors"))
    if config is not None:
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_partial_checkpoints_are_refused(tiny_dir, tmp_path):
    tensors = load_file(str(tiny_dir / "model.safetensors"))
    del tensors["text_hidden_fcs.2.weight"]
    tensors["grounding_encoder.sam2_model.not_a_tensor"] = torch.zeros(3)
    bad = _copy_with(tiny_dir, tmp_path / "bad", tensors=tensors)
    with pytest.raises(CheckpointError) as err:
        load_sa2va(bad)
    msg = str(err.value)
    assert "1 missing (text_hidden_fcs.2.weight)" in msg and "not_a_tensor" in msg and str(bad) in msg
    assert "\n" not in msg
    with pytest.warns(UserWarning, match="partial load"):
        partial = load_sa2va(bad, strict=False)
    assert partial.load_report.missing == ("text_hidden_fcs.2.weight",)
    assert partial.load_report.unexpected == ("grounding_encoder.sam2_model.not_a_tensor",)


def test_shape_mismatch_is_refused(tiny_dir, tmp_path):
    raw = json.loads((tiny_dir / "config.json").read_text())
    raw["llm_config"]["intermediate_size"] = 96  # the weights have 128
    bad = _copy_with(tiny_dir, tmp_path / "bad", config=raw)
    with pytest.raises(CheckpointError, match=r"wrong shape .*mlp\.(gate|up|down)_proj"):
        load_sa2va(bad)


def test_pickle_weights_need_opt_in(tiny_dir, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(str(tiny_dir / "model.safetensors")), folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="allow_pickle=True"):
        load_sa2va(folder)
    with pytest.warns(UserWarning, match="pickle"):
        assert load_sa2va(folder, allow_pickle=True).load_report.ok


# ----------------------------------------------------------------------------- the [SEG] → mask path


def test_seg_tokens_drive_the_mask_path(tiny, image):
    pred = tiny.predict(PROMPT, image=image, answer="Sure, [SEG] and [SEG].")
    assert pred.text == "Sure, [SEG] and [SEG]."
    assert len(pred.masks) == 2 and all(m.shape == (1, 90, 120) and m.dtype == bool for m in pred.masks)
    assert pred.seg_embeddings.shape == (2, 256)

    # Cross-check with a plain forward: last-layer states at the [SEG] positions → text_hidden_fcs.
    pil = to_pil(image)
    inputs = tiny.llm_inputs(PROMPT, [pil], is_video=False)
    answer = torch.tensor([tiny.tokenizer.encode("Sure, [SEG] and [SEG].", add_special_tokens=False)])
    ids = torch.cat([inputs["input_ids"], answer], dim=1)
    with torch.no_grad():
        hidden = tiny.model.vlm.model(input_ids=ids, pixel_values=inputs["pixel_values"]).last_hidden_state[0]
        expected = tiny.model.text_hidden_fcs(hidden[ids[0] == tiny.seg_id])
    assert torch.allclose(pred.seg_embeddings, expected, atol=1e-5)

    # The embedding reaches SAM-2's mask decoder as a third sparse token, after the
    # two padding tokens.
    seen = []
    decoder = tiny.model.grounding_encoder.sam2_model.sam_mask_decoder
    hook = decoder.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["sparse_prompt_embeddings"].clone()), with_kwargs=True)
    try:
        masks = tiny.segment_image(image, expected[:, None])
    finally:
        hook.remove()
    assert seen[0].shape == (2, 3, 256)
    assert torch.allclose(seen[0][:, 2], expected, atol=1e-6)
    assert np.array_equal(masks, np.stack([m[0] for m in pred.masks]))

    # Different [SEG] states give different mask logits; no [SEG], no mask.
    enc = tiny.model.grounding_encoder
    from refsav.model.preprocess import sam2_pixels

    ff = enc.encode(sam2_pixels(pil, enc.image_size)[None])
    feats, pos = ff.frame(0, 1)
    logits = [enc.prompt_frame(feats, pos, ff.feat_sizes, p[None, None], run_mem_encoder=False)["pred_masks"]
              for p in (expected[0], expected[1], expected[0])]
    assert not torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[2])
    none = tiny.predict(PROMPT, image=image, answer="There is no ball.")
    assert none.masks == () and none.seg_embeddings.shape == (0, 256)


class _Force:
    """A LogitsProcessor that makes greedy decoding emit a fixed token sequence."""

    def __init__(self, prompt_len, tokens):
        self.prompt_len, self.tokens = prompt_len, tokens

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_len
        forced = torch.full_like(scores, -1e9)
        forced[:, self.tokens[min(step, len(self.tokens) - 1)]] = 0.0
        return forced


def test_generated_seg_states_equal_teacher_forced(tiny, image):
    from transformers import LogitsProcessorList

    answer = "Sure, [SEG]."
    tokens = tiny.tokenizer.encode(answer, add_special_tokens=False) + [tiny.stop_ids[0]]
    prompt_len = tiny.llm_inputs(PROMPT, [to_pil(image)], is_video=False)["input_ids"].shape[1]
    gen = tiny.predict(PROMPT, image=image, options=PredictOptions(max_new_tokens=20),
                       logits_processor=LogitsProcessorList([_Force(prompt_len, tokens)]))
    assert gen.text == answer + "<|im_end|>"  # decoded like the official code: special tokens kept
    assert gen.answer_ids == tuple(tokens)  # stopped at the template's stop word
    forced = tiny.predict(PROMPT, image=image, answer=answer)
    assert torch.allclose(gen.seg_embeddings, forced.seg_embeddings, atol=1e-4)
    assert np.array_equal(gen.masks[0], forced.masks[0])
    # Determinism: same inputs, same outputs.
    again = tiny.predict(PROMPT, image=image, answer=answer)
    assert torch.equal(again.seg_embeddings, forced.seg_embeddings)
    assert np.array_equal(again.masks[0], forced.masks[0])


def test_video_key_frame_modes(tiny):
    rng = np.random.default_rng(1)
    video = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(5)]
    preds = {}
    for mode in ("first", "uniform"):
        opts = PredictOptions(key_frames=mode, num_key_frames=2)
        preds[mode] = tiny.predict(PROMPT, video=video, answer="Sure, [SEG].", options=opts)
        pred = preds[mode]
        assert len(pred.masks) == 1 and pred.masks[0].shape == (5, 48, 64)
        # Key frames take the [SEG] prompt without memory: exactly the single-image mask.
        for k in pred.key_frames:
            single = tiny.segment_image(video[k], pred.seg_embeddings[:, None])
            assert np.array_equal(pred.masks[0][k], single[0])
    assert preds["first"].key_frames == (0, 1)
    assert preds["uniform"].key_frames == (0, 4)
    # The LLM saw different frames, so the [SEG] states differ too.
    assert not torch.allclose(preds["first"].seg_embeddings, preds["uniform"].seg_embeddings)


def test_tracking_memory_is_bounded_and_dropping_changes_nothing():
    """Streamed tracking keeps only what SAM-2 can still attend to."""
    torch.manual_seed(0)
    enc = GroundingEncoder(Sam2Spec("configs/sam2.1/sam2.1_hiera_t.yaml", 128)).eval()
    sam = enc.sam2_model
    sam.num_maskmem, sam.max_obj_ptrs_in_encoder = 3, 3  # short history so 7 frames exercise the dropping
    frames = [torch.randn(3, 128, 128) for _ in range(7)]
    prompts = torch.randn(2, 1, 256)  # two objects share each frame's image features

    def run(keep_all):
        out = [(i, m.clone()) for i, m in enc.track(7, frames.__getitem__, prompts, (0, 3), keep_all_memory=keep_all)]
        return out, dict(enc.last_track_stats)

    bounded, stats = run(False)
    full, full_stats = run(True)
    assert [i for i, _ in bounded] == list(range(7))
    assert all(m.shape == (2, 1, 32, 32) for _, m in bounded)
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(bounded, full))
    assert stats["max_bank_entries"] == 2 < full_stats["max_bank_entries"] == 5
    # Encoding frames three at a time changes the batching, not the result.
    batched = list(enc.track(7, frames.__getitem__, prompts, (0, 3), backbone_batch=3))
    assert all(torch.allclose(a, b, atol=1e-4) for (_, a), (_, b) in zip(bounded, batched))


def test_bfloat16_runs_on_cpu_and_agrees_with_float32(tiny_dir, tiny, image):
    """The GPU benchmark's dtype path (bf16 VLM, SAM-2 under bf16 autocast), on CPU."""
    half = load_sa2va(tiny_dir, dtype=torch.bfloat16)
    assert half.model.dtype == torch.bfloat16 and half.model.grounding_encoder.compute_dtype == torch.bfloat16
    a = half.predict(PROMPT, image=image, answer="Sure, [SEG].")
    b = tiny.predict(PROMPT, image=image, answer="Sure, [SEG].")
    cos = torch.nn.functional.cosine_similarity(a.seg_embeddings, b.seg_embeddings).item()
    assert cos > 0.99, cos
    assert a.masks[0].shape == b.masks[0].shape and (a.masks[0] == b.masks[0]).mean() > 0.9


def test_bad_inputs_are_one_line_errors(tiny, image):
    with pytest.raises(RefsavError, match="exactly one of image or video"):
        tiny.predict(PROMPT, image=image, video=[image])
    with pytest.raises(SchemaError, match=r"video\[1\]"):
        tiny.predict(PROMPT, video=[image, image[:50]], answer="[SEG]")
    with pytest.raises(SchemaError, match="uint8"):
        tiny.predict(PROMPT, image=image.astype(np.float32))
    with pytest.raises(RefsavError, match="size"):
        CliRunner().invoke(model_group, ["init-random", "--size", "1b", "--base", "qwen2.5-vl", "--out", "x"],
                           catch_exceptions=False)
