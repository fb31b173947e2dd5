"""Sa2VA on Qwen2.5-VL and Qwen3-VL (transformers' Qwen2_5_VLForConditionalGeneration /
Qwen3VLForConditionalGeneration): the Qwen family's released key layouts, processor-built
prompts (M-RoPE positions, Qwen3-VL's DeepStack features), and the shared SAM-2 path."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from model.checkpoint import load_sa2va
from model.cli import model_group
from model.config import PredictOptions
from model.preprocess import to_pil
from model.random_init import write_random_checkpoint
from model.sa2va import append_answer
from schemas.errors import SchemaError

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
    with pytest.raises(SchemaError, match="only tiny"):
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
