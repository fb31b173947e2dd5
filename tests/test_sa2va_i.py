"""Sa2VA-i inference (`--inference sa2va-i`) on tiny random-weight Sa2VA checkpoints.

Two checkpoints from `refsav model init-random --size tiny`: the released layout
(one decoder, the fine-tuned one) and `--layout sa2va-i` (a second, differently
initialised decoder standing in for Meta's original). The reference run at the end
uses Meta's own `SAM2VideoPredictor` for the tracking half.
"""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file
from test_model import one_thread, tiny_dir  # noqa: F401 - fixtures: one torch thread, a tiny Sa2VA

import refsav.cli as root_cli
from refsav.model.checkpoint import CheckpointError, attach_original_decoder, load_sa2va, read_sam2_file
from refsav.model.cli import model_group
from refsav.model.config import PredictOptions
from refsav.model.preprocess import sam2_pixels
from refsav.model.sa2va_i import key_frame_indices, llm_key_frames, predict_sa2va_i

PROMPT = "<image>\nPlease segment the red ball."
ONE_SEG = "Sure, [SEG]."
SA2VA_I = PredictOptions(inference="sa2va-i")
GOLDEN = Path(__file__).parent / "fixtures" / "sa2va_official_golden.json"


@pytest.fixture(scope="module")
def tiny(tiny_dir):  # noqa: F811
    return load_sa2va(tiny_dir)


@pytest.fixture(scope="module")
def two_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sa2va_i") / "two"
    res = CliRunner().invoke(model_group, ["init-random", "--size", "tiny", "--layout", "sa2va-i", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def two(two_dir):
    return load_sa2va(two_dir)


@pytest.fixture(scope="module")
def video():
    rng = np.random.default_rng(3)
    return [rng.integers(0, 255, (40, 56, 3), dtype=np.uint8) for _ in range(7)]


@pytest.fixture(scope="module")
def meta_pt(tiny_dir, two, tmp_path_factory):  # noqa: F811
    """A file shaped like Meta's sam2_hiera_*.pt: {"model": flat SAM-2 state dict}, whose
    decoder is the two-decoder checkpoint's original one and whose frozen rest equals
    the tiny checkpoint's (same seed)."""
    base = load_sa2va(tiny_dir)
    state = {k: v.clone() for k, v in base.model.grounding_encoder.sam2_model.state_dict().items()}
    for k, v in two.model.grounding_encoder.sam2_model.original_mask_decoder.state_dict().items():
        state["sam_mask_decoder." + k] = v.clone()
    path = tmp_path_factory.mktemp("meta") / "sam2_tiny.pt"
    torch.save({"model": state}, path)
    return path


class _DecoderLog:
    """Which decoder module ran, tagged with the procedure's current step."""

    def __init__(self, sam):
        self.step = ("llm", -1)
        self.calls: list[tuple[str, int, str, float]] = []  # stage, frame, decoder, object score
        self.handles = [
            module.register_forward_hook(lambda _m, _a, out, name=name: self.calls.append(
                (*self.step, name, float(out[3].flatten()[0]))))
            for name, module in (("fine_tuned", sam.sam_mask_decoder), ("original", sam.original_mask_decoder))
        ]

    def event(self, stage: str, frame: int) -> None:
        self.step = (stage, frame)

    def close(self) -> None:
        for h in self.handles:
            h.remove()


# ----------------------------------------------------------------------------- key frames


def test_key_frame_indices_spread_from_first_to_last_frame(tiny, video):
    # Sa2VA-i truncates evenly spaced points (it does not round them).
    assert key_frame_indices(100, 5) == (0, 24, 49, 74, 99)
    assert key_frame_indices(37, 5) == (0, 9, 18, 27, 36)
    assert key_frame_indices(72, 12) == (0, 6, 12, 19, 25, 32, 38, 45, 51, 58, 64, 71)
    assert key_frame_indices(3, 5) == (0, 0, 1, 1, 2) and llm_key_frames(3, 5) == (0, 1, 2)
    assert key_frame_indices(1, 5) == (0,) * 5 and llm_key_frames(1, 5) == (0,)
    assert key_frame_indices(7, 1) == (0,)

    # The LLM sees exactly those frames, once each, in order (default N = 5).
    seen = []
    real = tiny.visual_context

    def spy(**kw):
        ctx = real(**kw)
        seen.append(ctx.frames)  # what the vision tower ran on
        return ctx

    tiny.visual_context = spy
    try:
        g = tiny.ground(PROMPT, video=video, options=SA2VA_I, answer=ONE_SEG)
    finally:
        del tiny.visual_context
    assert g.key_frames == (0, 1, 3, 4, 6) == llm_key_frames(7, 5)
    assert [np.asarray(f).tolist() for f in seen[0]] == [video[i].tolist() for i in g.key_frames]


# ----------------------------------------------------------------------------- decoders


def test_key_frames_use_the_fine_tuned_decoder_and_the_rest_the_original(two, video):
    sam = two.model.grounding_encoder.sam2_model
    assert not torch.equal(sam.sam_mask_decoder.conv_s0.weight, sam.original_mask_decoder.conv_s0.weight)
    log = _DecoderLog(sam)
    try:
        opts = PredictOptions(inference="sa2va-i", num_key_frames=3)
        pred = predict_sa2va_i(two, PROMPT, video=video, options=opts, answer=ONE_SEG, on_event=log.event)
    finally:
        log.close()
    keys = (0, 3, 6)
    assert pred.key_frames == keys
    by_step: dict[tuple[str, int], list[str]] = {}
    for stage, frame, name, _ in log.calls:
        by_step.setdefault((stage, frame), []).append(name)
    # Each key frame: one fine-tuned decode (the [SEG] mask, no memory), then the original
    # decoder once for its object pointer from the mask input. Every other frame: the
    # original decoder only, once.
    assert by_step == {
        **{("key_mask", k): ["fine_tuned"] for k in keys},
        **{("seed", k): ["original"] for k in keys},
        **{("propagate", i): ["original"] for i in range(7) if i not in keys},
    }

    # A key frame's mask is its memory-less fine-tuned mask (that frame decoded alone),
    # after the mask-input round trip written out here: frame size, threshold, S×S
    # (antialiased, >= 0.5), logits ±10, S/4 (antialiased), back to S, frame size.
    enc = two.model.grounding_encoder
    size, hw = enc.image_size, video[0].shape[:2]
    for k in keys:
        ff = enc.encode(sam2_pixels(Image.fromarray(video[k]), size, "official")[None])
        feats, pos = ff.frame(0, 1)
        with torch.no_grad():
            low = enc.decode(feats, pos, ff.feat_sizes, pred.seg_embeddings[:, None]).low_res
        binary = (F.interpolate(low, size=hw, mode="bilinear", align_corners=False) > 0).float()
        seed = (F.interpolate(binary, size=(size, size), mode="bilinear", antialias=True) >= 0.5).float()
        logits = F.interpolate(seed * 20 - 10, size=(size // 4, size // 4), mode="bilinear", antialias=True)
        logits = F.interpolate(logits, size=(size, size), mode="bilinear")
        expected = (F.interpolate(logits, size=hw, mode="bilinear") > 0)[0, 0].numpy()
        assert np.array_equal(pred.masks[0][k], expected)
        assert (expected == binary[0, 0].bool().numpy()).mean() > 0.9  # close to the decoder's own mask
    # The propagated frames depend on the original decoder only through tracking: another
    # original decoder changes them, not the key frames.
    before = copy.deepcopy(sam.original_mask_decoder.state_dict())
    try:
        with torch.no_grad():
            for p in sam.original_mask_decoder.parameters():
                p.add_(torch.randn_like(p) * 0.05)
            sam.original_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(50.0)
        other = predict_sa2va_i(two, PROMPT, video=video, options=opts, answer=ONE_SEG)
    finally:
        sam.original_mask_decoder.load_state_dict(before)
    assert all(np.array_equal(other.masks[0][k], pred.masks[0][k]) for k in keys)
    assert any(not np.array_equal(other.masks[0][i], pred.masks[0][i]) for i in range(7) if i not in keys)
    assert enc.sam2_model.decoder_role == "fine_tuned" and not enc.sam2_model.mask_absent_objects


def test_propagated_frames_with_a_non_positive_object_score_are_empty(two, video):
    sam = two.model.grounding_encoder.sam2_model
    bias = sam.original_mask_decoder.pred_obj_score_head.layers[-1].bias
    before = bias.detach().clone()
    opts = PredictOptions(inference="sa2va-i", num_key_frames=2)
    results = {}
    try:
        for shift in (-50.0, 0.0, 50.0):
            with torch.no_grad():
                bias.copy_(before + shift)
            log = _DecoderLog(sam)
            try:
                pred = predict_sa2va_i(two, PROMPT, video=video, options=opts, answer=ONE_SEG, on_event=log.event)
            finally:
                log.close()
            scores = {f: s for stage, f, _, s in log.calls if stage == "propagate"}
            results[shift] = (pred.masks[0], scores)
    finally:
        with torch.no_grad():
            bias.copy_(before)
    for shift, (masks, scores) in results.items():
        assert sorted(scores) == [1, 2, 3, 4, 5]
        for f, score in scores.items():
            if score <= 0:
                assert not masks[f].any(), (shift, f, score)
        assert masks[0].any() and masks[6].any()  # key frames come from the fine-tuned decoder
    assert all(s <= 0 for s in results[-50.0][1].values())
    assert all(s > 0 for s in results[50.0][1].values())
    assert any(results[50.0][0][f].any() for f in range(1, 6))  # gating is not blanket


# ----------------------------------------------------------------------------- reference run


def _meta_predictor(sam):
    """Meta's SAM2VideoPredictor with Sa2VA's settings and `sam`'s weights."""
    import importlib.resources

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(str(importlib.resources.files("sam2") / "configs/sam2.1/sam2.1_hiera_t.yaml"))
    cfg.model._target_ = "sam2.sam2_video_predictor.SAM2VideoPredictor"
    cfg.model.image_size = sam.image_size
    cfg.model.binarize_mask_from_pts_for_mem_enc = False
    cfg.model.sam_mask_decoder_extra_args = {"dynamic_multimask_via_stability": True,
                                             "dynamic_multimask_stability_delta": 0.05,
                                             "dynamic_multimask_stability_thresh": 0.98}
    cfg.model.compile_image_encoder = False
    OmegaConf.resolve(cfg)
    predictor = instantiate(cfg.model, _recursive_=True).eval()
    state = {k: v for k, v in sam.state_dict().items() if not k.startswith("original_mask_decoder.")}
    predictor.load_state_dict(state, strict=True)
    return predictor


@torch.no_grad()
def _reference_key_mask(predictor, pixels, seg, hw):
    """Stage 1 by hand: the decoder on one frame, no memory, [SEG] as a third sparse
    token after the two padding tokens, best of three by IoU, resized, thresholded."""
    _, feats, _, sizes = predictor._prepare_backbone_features(predictor.forward_image(pixels[None]))
    top = (feats[-1] + predictor.no_mem_embed).permute(1, 2, 0).reshape(1, -1, *sizes[-1])
    high = [x.permute(1, 2, 0).reshape(1, -1, *s) for x, s in zip(feats[:-1], sizes[:-1])]
    sparse, dense = predictor.sam_prompt_encoder(
        points=(torch.zeros(1, 1, 2), -torch.ones(1, 1, dtype=torch.int32)), boxes=None, masks=None)
    sparse = torch.cat([sparse, seg.reshape(1, 1, -1)], dim=1)
    masks, ious, _, _ = predictor.sam_mask_decoder(
        image_embeddings=top, image_pe=predictor.sam_prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense, multimask_output=True, repeat_image=False, high_res_features=high)
    best = masks[0, int(ious[0].argmax())]
    return F.interpolate(best[None, None].float(), size=hw, mode="bilinear", align_corners=False)[0, 0] > 0


def test_equal_decoders_match_a_hand_built_reference_run(tiny_dir, video, tmp_path):  # noqa: F811
    model = load_sa2va(tiny_dir)
    sam = model.model.grounding_encoder.sam2_model
    with torch.no_grad():  # every frame has the object: gating cannot differ between the two runs
        sam.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(30.0)
    sam.add_original_decoder()  # a copy: both decoders equal
    frames = video[:6]
    pred = model.predict(PROMPT, video=frames, options=PredictOptions(inference="sa2va-i", num_key_frames=2),
                         answer=ONE_SEG)
    assert pred.key_frames == (0, 5)

    predictor = _meta_predictor(sam)
    size, hw = predictor.image_size, frames[0].shape[:2]
    pixels = [sam2_pixels(Image.fromarray(f), size, "official") for f in frames]
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / f"{i:05d}.jpg")
    state = predictor.init_state(str(tmp_path))
    # As Sa2VA-i: the predictor gets the preprocessed S×S frames, so its "video size" is S.
    state["images"] = torch.stack(pixels)
    state["video_height"] = state["video_width"] = size
    state["cached_features"] = {}
    seg = pred.seg_embeddings[0]
    for k in (0, 5):
        predictor.add_new_mask(state, k, 1, _reference_key_mask(predictor, pixels[k], seg, hw))
    expected = np.zeros_like(pred.masks[0])
    for i, _, logits in predictor.propagate_in_video(state):
        expected[i] = (F.interpolate(logits, size=hw, mode="bilinear", align_corners=False)[0, 0] > 0).numpy()
    assert expected.any() and not expected.all()
    assert np.array_equal(pred.masks[0], expected)


# ----------------------------------------------------------------------------- official mode


def _golden_outputs(model, only=("first5", "uniform3", "image")):
    import hashlib

    rng = np.random.default_rng(7)
    clip = [rng.integers(0, 255, (40, 56, 3), dtype=np.uint8) for _ in range(9)]
    text = "<image>\nPlease segment the ball."
    out = {}
    for name, opts in {"first5": PredictOptions(),
                       "uniform3": PredictOptions(key_frames="uniform", num_key_frames=3)}.items():
        if name not in only:
            continue
        p = model.predict(text, video=clip, options=opts, answer="Sure, [SEG] and [SEG].")
        out[name] = {"key_frames": list(p.key_frames),
                     "masks_sha256": hashlib.sha256(np.packbits(np.stack(p.masks)).tobytes()).hexdigest(),
                     "mask_pixels": [int(x.sum()) for x in p.masks]}
    if "image" not in only:
        return out
    p = model.predict(text, image=clip[0], answer=ONE_SEG)
    out["image"] = {"masks_sha256": hashlib.sha256(np.packbits(np.stack(p.masks)).tobytes()).hexdigest(),
                    "mask_pixels": [int(x.sum()) for x in p.masks]}
    return out


def test_official_mode_is_unchanged_bit_for_bit(tiny, two):
    golden = json.loads(GOLDEN.read_text())
    golden.pop("note")
    assert _golden_outputs(tiny) == golden  # recorded from main before sa2va-i existed
    # A second decoder on board changes nothing in official mode, and is never called.
    log = _DecoderLog(two.model.grounding_encoder.sam2_model)
    try:
        with_original = _golden_outputs(two, only=("first5",))
    finally:
        log.close()
    assert with_original == {"first5": golden["first5"]}  # `two` has the same seed, so the same fine-tuned weights
    assert log.calls and {name for *_, name, _ in log.calls} == {"fine_tuned"}


# ----------------------------------------------------------------------------- the original decoder's file


def test_sam2_original_from_weights_only_torch_file_and_safetensors_copy(tiny_dir, two, meta_pt, video,  # noqa: F811
                                                                         tmp_path):
    want = two.predict(PROMPT, video=video, options=SA2VA_I, answer=ONE_SEG)
    copy_path = tmp_path / "sam2_tiny.safetensors"
    res = CliRunner().invoke(model_group, ["convert-sam2", "--in", str(meta_pt), "--out", str(copy_path)])
    assert res.exit_code == 0, res.output
    pt_state = torch.load(meta_pt, weights_only=True)["model"]
    st_state = load_file(str(copy_path))
    assert st_state.keys() == pt_state.keys() and all(torch.equal(st_state[k], pt_state[k]) for k in pt_state)
    for source in (meta_pt, copy_path):
        model = load_sa2va(tiny_dir)
        with pytest.raises(Exception, match="original SAM-2 mask decoder"):
            model.predict(PROMPT, video=video, options=SA2VA_I, answer=ONE_SEG)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the frozen SAM-2 tensors match: no warning
            attach_original_decoder(model, source)
        got = model.predict(PROMPT, video=video, options=SA2VA_I, answer=ONE_SEG)
        assert all(np.array_equal(a, b) for a, b in zip(got.masks, want.masks))

    # A file from another SAM-2 (a decoder tensor of another shape) is refused, in one line.
    bad = dict(pt_state)
    bad["sam_mask_decoder.iou_token.weight"] = torch.zeros(1, 8)
    torch.save({"model": bad}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="wrong shape") as err:
        attach_original_decoder(load_sa2va(tiny_dir), tmp_path / "other.pt")
    assert "\n" not in str(err.value)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_a_pickle_payload_is_refused_without_running(tmp_path, capsys):
    marker = tmp_path / "ran.txt"
    evil = tmp_path / "sam2_hiera_large.pt"
    torch.save({"model": {"sam_mask_decoder.iou_token.weight": torch.zeros(1, 256), "x": _Payload(marker)}}, evil)
    with pytest.raises(CheckpointError, match="refused or unreadable"):
        read_sam2_file(evil)
    assert root_cli.main(["model", "convert-sam2", "--in", str(evil), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refused" in err
    assert not marker.exists() and not (tmp_path / "x.safetensors").exists()


# ----------------------------------------------------------------------------- checkpoint layout and CLI


def test_two_decoder_layout_round_trips(two_dir, two, tmp_path):
    from refsav.model.checkpoint import save_released

    names = load_file(str(two_dir / "model.safetensors")).keys()
    tuned = [k for k in names if k.startswith("grounding_encoder.sam2_model.sam_mask_decoder_modified.")]
    original = [k for k in names if k.startswith("grounding_encoder.sam2_model.sam_mask_decoder.")]
    assert len(tuned) == len(original) > 100
    save_released(two, tmp_path / "again")
    again = load_sa2va(tmp_path / "again")
    a, b = two.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_predict_cli_sa2va_i(tiny_dir, two_dir, meta_pt, tmp_path, capsys):  # noqa: F811
    from refsav.pipelines.sample import EVAL, SampleConfig, write_sample

    write_sample(tmp_path / "gt", SampleConfig(videos=1, width=48, height=32, frames=6, objects=1), show_progress=False)
    gt = tmp_path / "gt" / EVAL

    def predict(model, out, *extra):
        return root_cli.main(["predict", "--model", str(model), "--protocol", "refsav", "--gt", str(gt), "--out",
                              str(tmp_path / out), "--dtype", "fp32", "--force-answer", ONE_SEG, *extra])

    # Without the original decoder, sa2va-i is refused before OUT exists.
    assert predict(tiny_dir, "none", "--inference", "sa2va-i") == 2
    assert "--sam2-original" in capsys.readouterr().err and not (tmp_path / "none").exists()
    assert predict(tiny_dir, "kf", "--inference", "sa2va-i", "--key-frames", "uniform",
                   "--sam2-original", meta_pt) == 2
    capsys.readouterr()

    assert predict(tiny_dir, "file", "--inference", "sa2va-i", "--sam2-original", meta_pt) == 0
    assert predict(two_dir, "layout", "--inference", "sa2va-i") == 0
    run = json.loads((tmp_path / "file" / "run.json").read_text())
    assert run["inference"] == "sa2va-i" and run["num_key_frames"] == 5
    assert run["sam2_original"] == str(meta_pt.resolve()) and len(run["sam2_original_sha256"]) == 64
    assert "sam2_original" not in json.loads((tmp_path / "layout" / "run.json").read_text())
    # Same decoders, same checkpoint otherwise: the same results either way.
    assert (tmp_path / "file" / "results.json").read_bytes() == (tmp_path / "layout" / "results.json").read_bytes()

    # Resuming with other settings is refused.
    assert predict(tiny_dir, "file") == 2
    err = capsys.readouterr().err
    assert "inference" in err and "run.json" in err
    # An official run.json from before --inference existed resumes as official.
    assert predict(tiny_dir, "off") == 0
    run_file = tmp_path / "off" / "run.json"
    old = json.loads(run_file.read_text())
    assert old.pop("inference") == "official"
    run_file.write_text(json.dumps(old))
    assert predict(tiny_dir, "off") == 0


def test_several_objects_track_as_one_batch_like_one_at_a_time(two, video):
    """Each [SEG] is its own object; batching them shares the image features only."""
    from refsav.model.sa2va_i import binary_mask_inputs

    enc = two.model.grounding_encoder
    size, hw = enc.image_size, video[0].shape[:2]
    prompts = torch.randn(2, 1, 256, generator=torch.Generator().manual_seed(0))

    def run(p):
        def key_mask(_i, feats, pos, sizes):
            return binary_mask_inputs(enc.decode(feats, pos, sizes, p).low_res, hw, size)[1]

        load = lambda i: sam2_pixels(Image.fromarray(video[i]), size, "official")  # noqa: E731
        with torch.no_grad():
            return {i: m.clone() for i, m in enc.track_from_masks(7, load, (0, 3, 6), key_mask, p.shape[0])}

    both = run(prompts)
    for k in range(2):
        alone = run(prompts[k : k + 1])
        assert all(torch.allclose(both[i][k], alone[i][0], atol=1e-3) for i in range(7))


def test_batched_api_runs_sa2va_i_one_prompt_at_a_time(two, video):
    """predict_batch (the server's and predict's path) must not track Sa2VA-i the official way."""
    from refsav.schemas.errors import RefsavError

    opts = PredictOptions(inference="sa2va-i", num_key_frames=3)
    texts = [PROMPT, "<image>\nPlease segment the blue box."]
    batched = two.predict_batch(texts, video=video, options=opts, answers=[ONE_SEG, "[SEG] and [SEG]"])
    alone = [two.predict(texts[0], video=video, options=opts, answer=ONE_SEG),
             two.predict(texts[1], video=video, options=opts, answer="[SEG] and [SEG]")]
    assert [len(p.masks) for p in batched] == [1, 2]
    for b, a in zip(batched, alone):
        assert b.text == a.text and b.key_frames == a.key_frames == (0, 3, 6)
        assert all(np.array_equal(x, y) for x, y in zip(b.masks, a.masks))
    grounding = two.ground(PROMPT, video=video, options=opts, answer=ONE_SEG)
    with pytest.raises(RefsavError, match="inference"):
        next(two.track_batch(video, [grounding], opts))
