"""refsav against the official Sa2VA `predict_forward` on the points where a quiet
difference changes the output: where generation stops, and how SAM-2's input is
normalised.

Each official rule is written out here from what the released code does
(docs/sa2va-checkpoints.md §5, §6) and run on the same tiny random-weight models,
so that refsav's own code path is compared with an independent one.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

import test_model
from refsav.model.checkpoint import load_sa2va
from refsav.model.cli import model_group
from refsav.model.config import IMAGENET_MEAN, IMAGENET_STD, SAM2_OFFICIAL_MEAN, SAM2_OFFICIAL_STD, PredictOptions
from refsav.model.preprocess import normalize, sam2_pixels, sam2_statistics, to_pil
from refsav.model.sam2_wrapper import upsample_logits

# Fixtures shared with tests/test_model.py: one torch thread, the tiny InternVL Sa2VA folder and model.
one_thread = test_model.one_thread
tiny_dir = test_model.tiny_dir
tiny = test_model.tiny
PROMPT = test_model.PROMPT


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(3).integers(0, 256, (50, 70, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- stop tokens


@pytest.fixture(scope="module", params=["internvl", "qwen2.5-vl", "qwen3-vl"])
def family_model(request, tiny_dir, tmp_path_factory):
    if request.param == "internvl":
        return request.param, tiny_dir, load_sa2va(tiny_dir)
    out = tmp_path_factory.mktemp("fidelity") / request.param
    result = CliRunner().invoke(model_group, ["init-random", "--base", request.param, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return request.param, out, load_sa2va(out)


_Force = test_model._Force  # greedy decoding forced to a fixed token sequence


class _StopWord(StoppingCriteria):
    """The InternVL-family official criterion: decode, drop CR/LF, stop when the text
    ends with the stop word."""

    def __init__(self, tokenizer, word: str):
        self.tokenizer, self.word = tokenizer, word

    def __call__(self, input_ids, scores, **kwargs):
        text = self.tokenizer.decode(input_ids[0]).replace("\r", "").replace("\n", "")
        return torch.full((input_ids.shape[0],), text.endswith(self.word), dtype=torch.bool)


def _official_generation(family: str, folder, sa2va) -> dict:
    """`generate` keyword arguments as the official predict_forward passes them."""
    tok = sa2va.tokenizer
    if family == "internvl":
        # Template stop words as criteria, plus eos_token_id = the tokenizer's EOS.
        words = {"qwen_chat": ["<|im_end|>", "<|endoftext|>"]}[json.loads((folder / "config.json").read_text())["template"]]
        return {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
                "stopping_criteria": StoppingCriteriaList([_StopWord(tok, w) for w in words])}
    # Qwen family: `self.model.generate(**inputs, max_new_tokens=2048, do_sample=False, ...)` on a
    # `Qwen*VLForConditionalGeneration(config)` built from config.json: its generation config
    # is transformers' default for that config.
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    raw = json.loads((folder / "config.json").read_text())
    fields = {k: v for k, v in raw.items() if k not in ("refsav", "template", "model_type", "architectures", "auto_map")}
    config = (Qwen2_5_VLConfig if family == "qwen2.5-vl" else Qwen3VLConfig)(**fields)
    return {"generation_config": GenerationConfig.from_model_config(config)}


def test_generation_stops_where_the_official_code_stops(family_model, image):
    family, folder, sa2va = family_model
    tok = sa2va.tokenizer
    ids = tok.convert_tokens_to_ids
    filler = tok.encode(" and more", add_special_tokens=False)
    forced = [ids("[SEG]"), ids("<|endoftext|>"), ids("<|im_end|>"), *filler]
    inputs = sa2va.llm_inputs(PROMPT, [to_pil(image)], is_video=False)
    prompt_len = inputs["input_ids"].shape[1]
    force = LogitsProcessorList([_Force(prompt_len, forced)])

    with torch.no_grad():
        out = sa2va.model.vlm.generate(**inputs, max_new_tokens=10, do_sample=False, logits_processor=force,
                                       **_official_generation(family, folder, sa2va))
    official = tok.decode(out[0, prompt_len:].tolist(), skip_special_tokens=False).strip()
    ours = sa2va.ground(PROMPT, image=image, options=PredictOptions(max_new_tokens=10),
                        logits_processor=LogitsProcessorList([_Force(prompt_len, forced)]))
    assert ours.text == official
    # InternVL's qwen_chat template stops on either word; the Qwen family's config only on <|im_end|>.
    expected = "[SEG]<|endoftext|>" if family == "internvl" else "[SEG]<|endoftext|><|im_end|>"
    assert official == expected
    assert ours.seg_hidden.shape[0] == 1  # the [SEG] was fed back, so it has a state


# ----------------------------------------------------------------------------- SAM-2 normalisation


def test_official_constants_are_the_bf16_rounded_imagenet_statistics():
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.bfloat16).float().tolist()
    std = torch.tensor(IMAGENET_STD, dtype=torch.bfloat16).float().tolist()
    assert SAM2_OFFICIAL_MEAN == tuple(mean) == (0.484375, 0.455078125, 0.40625)
    assert SAM2_OFFICIAL_STD == tuple(std) == (0.228515625, 0.2236328125, 0.224609375)
    assert sam2_statistics("official") == (SAM2_OFFICIAL_MEAN, SAM2_OFFICIAL_STD)
    exact_mean, exact_std = sam2_statistics("exact")
    assert exact_mean == IMAGENET_MEAN and exact_std == IMAGENET_STD
    assert torch.tensor(exact_mean).tolist() == torch.tensor(IMAGENET_MEAN, dtype=torch.float32).tolist()
    assert PredictOptions().sam2_norm == "official"


def _official_preprocess(img: Image.Image, size: int, *, still_image_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The released grounding input: DirectResize (PIL's default filter), CHW, then
    `preprocess_image` with bf16 statistics. Video frames are divided as uint8 (float32
    result); a still image is first cast to the model dtype and normalised in it."""
    pixels = torch.from_numpy(np.array(img.resize((size, size)))).permute(2, 0, 1).contiguous()
    if still_image_dtype is not None:
        pixels = pixels.to(still_image_dtype)
    x = pixels / 255.0
    x -= torch.tensor(IMAGENET_MEAN, dtype=torch.bfloat16)[:, None, None]
    x /= torch.tensor(IMAGENET_STD, dtype=torch.bfloat16)[:, None, None]
    return x


def test_official_and_exact_pixels(image):
    img = to_pil(image)
    official = sam2_pixels(img, 64)
    assert official.dtype == torch.float32 and torch.equal(official, _official_preprocess(img, 64))
    in_bf16 = sam2_pixels(img, 64, arithmetic=torch.bfloat16)
    assert in_bf16.dtype == torch.bfloat16
    assert torch.equal(in_bf16, _official_preprocess(img, 64, still_image_dtype=torch.bfloat16))
    # bf16 arithmetic is not float32 arithmetic rounded once at the end.
    assert not torch.equal(in_bf16, official.to(torch.bfloat16))

    exact = sam2_pixels(img, 64, "exact")
    x = torch.from_numpy(np.asarray(img.resize((64, 64), Image.BICUBIC), dtype=np.float32) / 255.0).permute(2, 0, 1)
    by_hand = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.equal(exact, by_hand) and torch.equal(exact, normalize(img.resize((64, 64), Image.BICUBIC)))
    # "exact" ignores a bf16 request: it is float32 throughout.
    assert torch.equal(sam2_pixels(img, 64, "exact", arithmetic=torch.bfloat16), exact)
    diff = (official - exact).abs()
    assert (diff > 0).float().mean() > 0.9 and 1e-3 < float(diff.max()) < 2e-2


def _masks_from_pixels(sa2va, pixels, prompts, size):
    enc = sa2va.model.grounding_encoder
    ff = enc.encode(pixels[None])
    feats, pos = ff.frame(0, prompts.shape[0])
    out = enc.prompt_frame(feats, pos, ff.feat_sizes, prompts, run_mem_encoder=False)
    return upsample_logits(out["pred_masks"], enc.image_size, size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masks_use_the_official_pixels_by_default(tiny_dir, image, dtype):
    sa2va = load_sa2va(tiny_dir, dtype=dtype)
    img = to_pil(image)
    size = (img.height, img.width)
    prompts = sa2va.predict(PROMPT, image=image, answer="Sure, [SEG].").seg_embeddings[:, None]
    S = sa2va.model.grounding_encoder.image_size
    still = torch.bfloat16 if dtype == torch.bfloat16 else None
    official = _masks_from_pixels(sa2va, _official_preprocess(img, S, still_image_dtype=still), prompts, size)
    exact = _masks_from_pixels(sa2va, sam2_pixels(img, S, "exact"), prompts, size)
    assert not torch.equal(official, exact)  # the statistics reach the mask logits
    assert np.array_equal(sa2va.segment_image(image, prompts), (official > 0).numpy())
    assert np.array_equal(sa2va.segment_image(image, prompts, norm="exact"), (exact > 0).numpy())
    # Normalised as a video frame (float32 arithmetic, then the model's dtype).
    as_frame = _masks_from_pixels(sa2va, _official_preprocess(img, S), prompts, size)
    assert np.array_equal(sa2va.segment_image(image, prompts, video_frame=True), (as_frame > 0).numpy())


def test_video_frames_use_the_chosen_statistics(tiny):
    rng = np.random.default_rng(4)
    video = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(3)]
    S = tiny.model.grounding_encoder.image_size
    seen = []
    trunk = tiny.model.grounding_encoder.sam2_model.image_encoder
    hook = trunk.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        for norm in ("official", "exact"):
            tiny.predict(PROMPT, video=video, answer="[SEG]", options=PredictOptions(num_key_frames=1, sam2_norm=norm))
    finally:
        hook.remove()
    official, exact = seen[0][0], seen[3][0]  # frame 0 of each run (one frame per encoder call)
    assert len(seen) == 6
    assert torch.equal(official, _official_preprocess(to_pil(video[0]), S))
    assert torch.equal(exact, sam2_pixels(to_pil(video[0]), S, "exact"))
    assert not torch.equal(official, exact)


def test_cli_records_the_normalisation(tiny_dir, tmp_path, capsys):
    import refsav.cli as root_cli
    from refsav.pipelines.sample import EVAL, SampleConfig, write_sample

    write_sample(tmp_path / "gt", SampleConfig(videos=1, width=48, height=32, frames=2, objects=1),
                 show_progress=False)

    def predict(out, *extra):
        args = ["predict", "--model", tiny_dir, "--protocol", "refsav", "--gt", tmp_path / "gt" / EVAL, "--out", out,
                "--dtype", "fp32", "--force-answer", "Sure, [SEG].", "--num-key-frames", "1", *extra]
        return root_cli.main([str(a) for a in args])

    assert predict(tmp_path / "exact", "--sam2-norm", "exact") == 0
    assert json.loads((tmp_path / "exact" / "run.json").read_text())["sam2_norm"] == "exact"
    err = capsys.readouterr().err
    assert "%|" not in err and "Loading" not in err  # no library tqdm bar inside refsav's display
    # The default is the official normalisation, and it does not mix with exact parts.
    assert predict(tmp_path / "exact") == 2
    err = capsys.readouterr().err
    assert "sam2_norm" in err and "run.json" in err
    # A run.json from before the option (no sam2_norm) was made with exact statistics.
    run = json.loads((tmp_path / "exact" / "run.json").read_text())
    del run["sam2_norm"]
    (tmp_path / "exact" / "run.json").write_text(json.dumps(run))
    assert predict(tmp_path / "exact") == 2
    assert "sam2_norm" in capsys.readouterr().err
    assert predict(tmp_path / "exact", "--sam2-norm", "exact") == 0
    assert "1 resumed" in capsys.readouterr().out
