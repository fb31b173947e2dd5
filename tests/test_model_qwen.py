"""Sa2VA on Qwen2.5-VL and Qwen3-VL (transformers' Qwen2_5_VLForConditionalGeneration /
Qwen3VLForConditionalGeneration): the Qwen family's released key layouts, processor-built
prompts (M-RoPE positions, Qwen3-VL's DeepStack features), and the shared SAM-2 path."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from refsav.model.checkpoint import load_sa2va
from refsav.model.cli import model_group
from refsav.model.config import PredictOptions, QwenPixelSpec, Sa2VAConfig
from refsav.model.preprocess import qwen_token_grid, qwen_vl_image, smart_resize, to_pil
from refsav.model.random_init import write_random_checkpoint
from refsav.model.sa2va import append_answer
from refsav.schemas.errors import RefsavError, SchemaError

PROMPT = "<image>\nPlease segment the red ball."
# Per base: the transformers class, the ViT patch (pixel_values row = 3 · 2 frames · patch²),
# and a released key only that ViT has.
BASES = {
    "qwen2.5-vl": ("Qwen2_5_VLForConditionalGeneration", 14, "model.model.visual.merger.mlp.0.weight"),
    "qwen3-vl": ("Qwen3VLForConditionalGeneration", 16, "model.model.visual.deepstack_merger_list.1.linear_fc2.weight"),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared 2-core machine: see test_model.py
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=sorted(BASES))
def qwen_dir(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("sa2va_qwen") / request.param
    result = CliRunner().invoke(model_group, ["init-random", "--base", request.param, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_qwen3_vl_has_no_4b_shapes(tmp_path):
    with pytest.raises(RefsavError, match="only tiny"):
        write_random_checkpoint(tmp_path / "q3", "4b", "qwen3-vl")


def test_qwen_checkpoint_layouts_and_prediction(qwen_dir, tmp_path):
    cls_name, patch, vit_key = BASES[qwen_dir.name]
    raw = json.loads((qwen_dir / "config.json").read_text())
    assert raw["model_type"] == "sa2va_chat" and raw["architectures"] == ["Sa2VAChatModelQwen"]
    assert "<|vision_start|>" in raw["template"]  # a Jinja chat template, not an xtuner name
    tensors = load_file(str(qwen_dir / "model.safetensors"))
    assert "model.lm_head.weight" in tensors and vit_key in tensors
    assert any(k.startswith("model.model.visual.") for k in tensors)
    assert any(k.startswith("model.model.language_model.") for k in tensors)

    model = load_sa2va(qwen_dir)
    assert model.load_report.ok and model.processor is not None
    assert model.config.family == qwen_dir.name and type(model.model.vlm).__name__ == cls_name

    # The pre-4.52 layout (model.visual.*, model.model.* for the LLM) loads to the same weights.
    old = {k.replace("model.model.visual.", "model.visual.").replace("model.model.language_model.", "model.model."): v
           for k, v in tensors.items()}
    folder = tmp_path / "old_layout"
    folder.mkdir()
    for f in qwen_dir.iterdir():
        if f.suffix != ".safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    save_file(old, str(folder / "model.safetensors"))
    legacy = load_sa2va(folder)
    a, b = model.model.state_dict(), legacy.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    pred = model.predict(PROMPT, image=image, answer="Sure, [SEG].")
    assert pred.text == "Sure, [SEG]." and len(pred.masks) == 1 and pred.masks[0].shape == (1, 90, 120)
    with torch.no_grad():  # the embedding is text_hidden_fcs of the last-layer [SEG] state
        inputs = model.llm_inputs(PROMPT, [to_pil(image)], is_video=False)
        assert inputs["pixel_values"].shape[1] == 3 * 2 * patch * patch
        ans = torch.tensor([model.tokenizer.encode("Sure, [SEG].", add_special_tokens=False)])
        full = append_answer(inputs, ans)
        hidden = model.model.vlm.model(**full).last_hidden_state[0]
        expected = model.model.text_hidden_fcs(hidden[full["input_ids"][0] == model.seg_id])
    assert torch.allclose(pred.seg_embeddings, expected, atol=1e-5)

    video = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    vid = model.predict(PROMPT, video=video, answer="[SEG]", options=PredictOptions(num_key_frames=2))
    assert vid.key_frames == (0, 1) and vid.masks[0].shape == (3, 48, 64)
    gen = model.predict(PROMPT, image=image, options=PredictOptions(max_new_tokens=3))
    # A [SEG] counts once fed back to the LLM, so never the last generated token.
    assert len(gen.answer_ids) <= 3 and len(gen.masks) == gen.answer_ids[:-1].count(model.seg_id)


# ------------------------------------------------------------------ image sizing (released: 512..2048·28² pixels)
WIDE = (4 * 28 * 28, 16384 * 28 * 28)  # qwen_vl_utils' own bounds
SA2VA = (512 * 28 * 28, 2048 * 28 * 28)


def test_smart_resize_hand_computed():
    # Rounding only: each side to the nearest multiple of 28.
    assert smart_resize(100, 100, 28, *WIDE) == (112, 112)
    assert smart_resize(90, 120, 28, *WIDE) == (84, 112)
    assert smart_resize(480, 640, 28, *WIDE) == (476, 644)  # 17.1 → 17, 22.9 → 23
    # Upsizing 640x480: 476·644 = 306,544 < 401,408 → ×sqrt(401408/307200) = 1.1431:
    # 548.7 → ceil to 20·28, 731.6 → ceil to 27·28.
    assert smart_resize(480, 640, 28, *SA2VA) == (560, 756)
    # Downsizing 1080p: 1092·1932 > 1,605,632 → ÷sqrt(2073600/1605632) = 1.1364:
    # 950.4 → floor to 33·28, 1689.6 → floor to 60·28.
    assert smart_resize(1080, 1920, 28, *SA2VA) == (924, 1680)
    # Qwen3-VL rounds to 32: 476·644 → ×1.1443 → 544.7 → 18·32, 736.9 → 24·32.
    assert smart_resize(476, 644, 32, *SA2VA) == (576, 768)
    # A side never rounds below one factor; a 10 px square is then scaled ×sqrt(3136/100) = 5.6.
    assert smart_resize(10, 10, 28, 1, 10**9) == (28, 28)
    assert smart_resize(10, 10, 28, *WIDE) == (56, 56)
    # Beyond 200:1 is refused, as upstream does.
    with pytest.raises(SchemaError, match="aspect ratio"):
        smart_resize(1, 201, 28, *WIDE)
    for h, w in [(480, 640), (1080, 1920), (37, 200), (3000, 400), (2160, 3840)]:
        for factor in (28, 32):
            rh, rw = smart_resize(h, w, factor, *SA2VA)
            assert rh % factor == 0 and rw % factor == 0
            assert SA2VA[0] <= rh * rw <= SA2VA[1]
            # Aspect kept up to one factor of rounding per side.
            assert abs(rw / rh - w / h) <= (w / h) * (factor / rh + factor / rw) * 1.01


def test_token_grid_is_both_resizes():
    spec = QwenPixelSpec()
    assert (spec.min_pixels, spec.max_pixels) == SA2VA  # the released default
    assert qwen_token_grid(480, 640, spec, 28) == (20, 27)  # 540 tokens
    assert qwen_token_grid(480, 640, spec, 32) == (18, 24)  # via 476x644; one-step would give 18x23
    assert qwen_token_grid(1080, 1920, spec, 28) == (34, 60)  # via 1092x1932; one-step would give 33x60
    img = qwen_vl_image(to_pil(np.zeros((1080, 1920, 3), dtype=np.uint8)))
    assert img.size == (1932, 1092)


def test_qwen_pixel_bounds_in_config():
    raw = {"model_type": "sa2va_chat", "template": "{{ x }}", "vision_config": {"model_type": "qwen2_5_vl"},
           "text_config": {"hidden_size": 8}}
    cfg = Sa2VAConfig.from_released(raw)
    assert cfg.qwen_pixels == QwenPixelSpec() and "refsav" not in cfg.to_released()  # released: untouched
    small = dataclasses.replace(cfg, qwen_pixels=QwenPixelSpec(min_pixels=100, max_pixels=200))
    again = Sa2VAConfig.from_released(small.to_released())
    assert again.qwen_pixels == QwenPixelSpec(min_pixels=100, max_pixels=200)
    bad = {**raw, "refsav": {"qwen_pixels": {"min_pixels": 10, "max_pixels": 5}}}
    with pytest.raises(SchemaError, match="qwen_pixels"):
        Sa2VAConfig.from_released(bad, file="config.json")


def test_processor_tokens_follow_pixel_bounds(qwen_dir):
    _, patch, _ = BASES[qwen_dir.name]
    model = load_sa2va(qwen_dir)
    factor = patch * model.processor.image_processor.merge_size
    saved = model.processor.image_processor.size
    # The tiny checkpoint records its small bounds; inference uses the config's.
    assert (model.config.qwen_pixels.min_pixels, model.config.qwen_pixels.max_pixels) == (
        saved.shortest_edge, saved.longest_edge)
    pad_id = model.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    rng = np.random.default_rng(1)
    # Bounds other than the saved processor's show that the call's bounds win.
    for spec in (model.config.qwen_pixels, QwenPixelSpec(min_pixels=4 * factor**2, max_pixels=9 * factor**2)):
        model.config = dataclasses.replace(model.config, qwen_pixels=spec)
        for h, w in [(90, 120), (37, 200), (300, 100), (64, 64)]:
            frames = [to_pil(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for _ in range(2)]
            inputs = model.llm_inputs(PROMPT, frames, is_video=True)
            rows, cols = qwen_token_grid(h, w, spec, factor)
            merge = factor // patch
            assert inputs["image_grid_thw"].tolist() == [[1, rows * merge, cols * merge]] * 2, (spec, h, w)
            assert int((inputs["input_ids"] == pad_id).sum()) == 2 * rows * cols
            assert spec.min_pixels <= rows * cols * factor**2 <= spec.max_pixels
