"""Sa2VA on Qwen2.5-VL (transformers' Qwen2_5_VLForConditionalGeneration): the Qwen
family's released key layouts, processor-built prompts, and the shared SAM-2 path."""
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
from model.sa2va import append_answer

PROMPT = "<image>\nPlease segment the red ball."


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared 2-core machine: see test_model.py
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sa2va_qwen") / "tiny"
    result = CliRunner().invoke(model_group, ["init-random", "--base", "qwen2.5-vl", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_qwen_checkpoint_layouts_and_prediction(qwen_dir, tmp_path):
    raw = json.loads((qwen_dir / "config.json").read_text())
    assert raw["model_type"] == "sa2va_chat" and raw["architectures"] == ["Sa2VAChatModelQwen"]
    assert "<|vision_start|>" in raw["template"]  # a Jinja chat template, not an xtuner name
    tensors = load_file(str(qwen_dir / "model.safetensors"))
    assert "model.lm_head.weight" in tensors
    assert any(k.startswith("model.model.visual.") for k in tensors)
    assert any(k.startswith("model.model.language_model.") for k in tensors)

    model = load_sa2va(qwen_dir)
    assert model.load_report.ok and model.processor is not None

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
