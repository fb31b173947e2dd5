"""Sa2VA inference speed and memory vs video length, on one CUDA GPU (bf16).

Builds random-weight Sa2VA-1B / -4B checkpoints in the released layout
(`refsav model init-random`), loads them through the normal loader, and runs
`predict` on synthetic videos of growing length. Random weights cannot be trusted
to emit [SEG], so the answer is forced ("Sure, [SEG]." — one teacher-forced
forward over prompt + answer), which times exactly the official prompt (5 key
frames × 256 tokens) and the full SAM-2 pass (every frame, 1024 px, memory
attention over key frames + the 6 previous frames).

Reported per (model, inference, frames, objects): LLM seconds, SAM-2 seconds, SAM-2
and end-to-end frames/s, and peak GPU memory (torch.cuda.max_memory_allocated).
`--inference official,sa2va-i` (the default) times both procedures on the same
checkpoint, written in the Sa2VA-i two-decoder layout (the official procedure uses
its fine-tuned decoder, Sa2VA-i also the stand-in for Meta's original one). Sa2VA-i's
LLM time runs to its first key-frame decode (`on_event`); the rest is SAM-2: every
key frame decoded without memory, then tracking with the original decoder.
Reference point: the official code keeps every frame at 1024 px on the GPU and
runs out of memory at ~80 frames for the 8B model on a 48 GB card; refsav
streams frames, so peak memory should stay flat as the video grows.

    python perf/bench_model_gpu.py --out perf/model_gpu.md
    python perf/bench_model_gpu.py --sizes 1b --frames 8,32 --objects 1,3   # quick look

Batched vs one at a time (`--expressions E`, off by default): per (model, frames),
E expressions of one video (forced answers) predicted one at a time (`ground` +
`track_masks` per expression, as `refsav predict` did before batching) and in one
pass (`ground_batch` with an LLM batch of E + `track_batch`: one vision-tower call,
each frame encoded once for all E objects). Reported: seconds, expression-frames/s
and peak GPU memory of each, the speed-up, and whether the masks agree.

    python perf/bench_model_gpu.py --expressions 8 --batching-frames 8,32,128,256   # adds that table
    python perf/bench_model_gpu.py --expressions 8 --frames '' --batching-frames 32  # only the batching table

Image latency (`--image-runs R`, default 5): R predictions of one image per model,
forced answer; median and minimum milliseconds and peak GPU memory.

Needs CUDA: without it, exits at once with a message (status 2). `--cpu-smoke
--sizes tiny` runs the same code on CPU to check the script itself.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: python perf/...


class SyntheticVideo:
    """Frames made on demand (a square moving over a fixed noise background), so a
    256-frame 720p video costs no memory until a frame is asked for."""

    def __init__(self, n: int, height: int, width: int, seed: int = 0):
        self.n, self.h, self.w = n, height, width
        self.background = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.n:
            raise IndexError(i)
        frame = self.background.copy()
        side = max(8, min(self.h, self.w) // 5)
        y = (i * 7) % max(1, self.h - side)
        x = (i * 11) % max(1, self.w - side)
        frame[y : y + side, x : x + side] = (230, 40, 40)
        return frame


def time_batching(sa2va, model: str, video: SyntheticVideo, expressions: int, key_frames: str, backbone_batch: int,
                  sync, cuda: bool) -> dict:
    """E expressions of one video, one at a time and batched (forced answers); masks are
    compared frame by frame and dropped, so the table measures the model, not mask storage."""
    import torch

    from refsav.model.config import PredictOptions

    opts = PredictOptions(key_frames=key_frames, backbone_batch=backbone_batch, batch_size=expressions)
    texts = [f"<image>\nPlease segment the red square number {k}." for k in range(expressions)]
    answers = ["Sure, [SEG]."] * expressions
    n = len(video)

    def measure(fn):
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = fn()
        sync()
        return out, time.perf_counter() - t0, (torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"))

    def one_at_a_time():
        # Per-frame masks of every expression, packed to bits to keep the comparison cheap.
        got = [[None] * n for _ in texts]
        for k, (text, answer) in enumerate(zip(texts, answers)):
            g = sa2va.ground(text, video=video, options=opts, answer=answer)
            for i, m in sa2va.track_masks(video, sa2va.model.seg_prompts(g.seg_hidden), g.key_frames, opts):
                got[k][i] = np.packbits(m[0])
        return got

    def batched(one_sam2_batch: bool):
        got = [[None] * n for _ in texts]
        groundings = sa2va.ground_batch(texts, video=video, options=opts, answers=answers)
        for i, per in sa2va.track_batch(video, groundings, opts, one_sam2_batch=one_sam2_batch):
            for k, m in enumerate(per):
                got[k][i] = np.packbits(m[0])
        return got

    def differ(a, b) -> str:
        bad = sum(not np.array_equal(x, y) for rx, ry in zip(a, b) for x, y in zip(rx, ry))
        return "yes" if bad == 0 else f"{bad} of {n * expressions} frames differ"

    single, single_s, single_peak = measure(one_at_a_time)
    batch, batched_s, batched_peak = measure(lambda: batched(False))
    one, one_s, one_peak = measure(lambda: batched(True))
    return {
        "model": model, "frames": n, "expressions": expressions, "single_s": single_s, "batched_s": batched_s,
        "one_batch_s": one_s, "single_peak_gib": single_peak, "batched_peak_gib": batched_peak,
        "one_batch_peak_gib": one_peak, "masks_equal": differ(single, batch), "one_batch_equal": differ(single, one),
    }


def parse_list(text: str, cast=int) -> list:
    return [cast(t) for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1b,4b", help="comma list of init-random sizes (1b, 4b)")
    ap.add_argument("--base", default="internvl", choices=["internvl", "qwen2.5-vl"])
    ap.add_argument("--frames", default="8,32,64,128,256", help="comma list of video lengths")
    ap.add_argument("--objects", default="1", help="comma list of [SEG] counts per answer")
    ap.add_argument("--resolution", default="720x1280", help="frame HxW")
    ap.add_argument("--key-frames", default="first", choices=["first", "uniform"])
    ap.add_argument("--inference", default="official,sa2va-i",
                    help="comma list of procedures for the main table: official, sa2va-i")
    ap.add_argument("--backbone-batch", type=int, default=1, help="frames per SAM-2 image-encoder batch")
    ap.add_argument("--expressions", type=int, default=0,
                    help="also time E expressions per video batched vs one at a time (0: off)")
    ap.add_argument("--image-runs", type=int, default=5, help="image predictions timed per model (0: none)")
    ap.add_argument("--batching-frames", default="32,128", help="video lengths of the batching table")
    ap.add_argument("--workdir", default="perf/_model_ckpts", help="where the random checkpoints are written")
    ap.add_argument("--out", default=None, help="also write the Markdown table here")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="run the same code on CPU in float32 with --sizes tiny (checks the script, measures nothing useful)")
    args = ap.parse_args(argv)

    import torch

    if args.cpu_smoke:
        device, dtype = torch.device("cpu"), torch.float32
    elif not torch.cuda.is_available():
        print("bench_model_gpu: needs a CUDA GPU (torch.cuda.is_available() is False); nothing was run.",
              file=sys.stderr)
        return 2
    else:
        device, dtype = torch.device("cuda"), torch.bfloat16
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    from refsav.model.checkpoint import load_sa2va
    from refsav.model.config import PredictOptions
    from refsav.model.random_init import write_random_checkpoint
    from refsav.model.sa2va_i import predict_sa2va_i

    height, width = (int(v) for v in args.resolution.lower().split("x"))
    modes = parse_list(args.inference, str)
    if not modes or any(m not in ("official", "sa2va-i") for m in modes):
        ap.error(f"--inference: a comma list of official, sa2va-i; got {args.inference!r}")
    layout = "sa2va-i" if "sa2va-i" in modes else "sa2va"
    gpu = torch.cuda.get_device_name(device) if cuda else "CPU (smoke run)"
    rows, batch_rows, image_rows = [], [], []
    for size in parse_list(args.sizes, str):
        folder = Path(args.workdir) / f"{args.base}-{size}-{layout}"
        if not (folder / "config.json").is_file():
            t0 = time.perf_counter()
            ckpt = write_random_checkpoint(folder, size, args.base, dtype=dtype, layout=layout)
            print(f"# wrote {folder} ({ckpt.num_parameters / 1e9:.2f} B params) in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr)
        t0 = time.perf_counter()
        sa2va = load_sa2va(folder, dtype=dtype, device=device)
        print(f"# loaded {folder} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        prompt = "<image>\nPlease segment the red square."
        warm = SyntheticVideo(6, height, width)
        sa2va.predict(prompt, video=warm, answer="Sure, [SEG].", options=PredictOptions())  # CUDA / cuDNN warm-up
        for mode, n_obj, n in ((m, o, f) for m in modes for o in parse_list(args.objects)
                               for f in parse_list(args.frames)):
            answer = "Sure, " + " and ".join(["[SEG]"] * n_obj) + "."
            video = SyntheticVideo(n, height, width)
            opts = PredictOptions(key_frames=args.key_frames, backbone_batch=args.backbone_batch, inference=mode)
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            base_mem = torch.cuda.memory_allocated() if cuda else float("nan")
            t0 = time.perf_counter()
            if mode == "official":
                ground = sa2va.ground(prompt, video=video, options=opts, answer=answer)
                sync()
                t1 = time.perf_counter()
                prompts = sa2va.model.seg_prompts(ground.seg_hidden)
                tracked = 0
                for _, masks in sa2va.track_masks(video, prompts, ground.key_frames, opts):
                    tracked += 1  # masks are dropped: the table measures the model, not mask storage
                objects = ground.seg_hidden.shape[0]
            else:
                first: list[float] = []

                def mark(stage: str, frame: int) -> None:
                    if not first:
                        sync()
                        first.append(time.perf_counter())

                pred = predict_sa2va_i(sa2va, prompt, video=video, options=opts, answer=answer, on_event=mark)
                t1 = first[0] if first else time.perf_counter()
                tracked, objects = (pred.masks[0].shape[0] if pred.masks else 0), len(pred.masks)
                del pred
            sync()
            t2 = time.perf_counter()
            if tracked != n or objects != n_obj:
                raise RuntimeError(f"{mode}: tracked {tracked}/{n} frames, {objects}/{n_obj} objects")
            peak = torch.cuda.max_memory_allocated() if cuda else float("nan")
            rows.append({
                "model": f"{args.base}-{size}", "inference": mode, "frames": n, "objects": n_obj,
                "llm_s": t1 - t0, "sam_s": t2 - t1,
                "sam_fps": n / (t2 - t1), "total_fps": n / (t2 - t0),
                "peak_gib": peak / 2**30, "weights_gib": base_mem / 2**30,
            })
            r = rows[-1]
            print(f"# {r['model']} {mode} T={n} obj={n_obj}: LLM {r['llm_s']:.2f}s SAM {r['sam_s']:.2f}s "
                  f"({r['sam_fps']:.1f} fps) peak {r['peak_gib']:.2f} GiB", file=sys.stderr)
        if args.image_runs > 0:
            image = SyntheticVideo(1, height, width)[0]
            times = []
            for _ in range(args.image_runs):
                sync()
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                pred = sa2va.predict(prompt, image=image, answer="Sure, [SEG].", options=PredictOptions())
                sync()
                times.append(time.perf_counter() - t0)
                if len(pred.masks) != 1:
                    raise RuntimeError(f"image: {len(pred.masks)} masks for one [SEG]")
            image_rows.append({"model": f"{args.base}-{size}", "median_s": float(np.median(times)),
                               "min_s": min(times), "runs": len(times),
                               "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")})
            print(f"# {args.base}-{size} image: median {image_rows[-1]['median_s'] * 1000:.0f} ms", file=sys.stderr)
        if args.expressions > 0:
            for n in parse_list(args.batching_frames):
                batch_rows.append(time_batching(sa2va, f"{args.base}-{size}", SyntheticVideo(n, height, width),
                                                args.expressions, args.key_frames, args.backbone_batch, sync, cuda))
                r = batch_rows[-1]
                print(f"# {r['model']} T={n} E={r['expressions']}: one at a time {r['single_s']:.2f}s, "
                      f"batched {r['batched_s']:.2f}s ({r['single_s'] / r['batched_s']:.1f}x)", file=sys.stderr)
        del sa2va
        if cuda:
            torch.cuda.empty_cache()

    lines = [
        f"Sa2VA inference on {gpu}, {str(dtype).removeprefix('torch.')}, random weights, {height}x{width} frames, "
        f"key frames '{args.key_frames}', forced answer with N [SEG] (teacher forcing), backbone batch {args.backbone_batch}.",
        "",
        "| model | inference | frames | [SEG] objects | LLM s | SAM-2 s | SAM-2 frames/s | end-to-end frames/s | "
        "peak GPU GiB | weights GiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['inference']} | {r['frames']} | {r['objects']} | {r['llm_s']:.2f} | {r['sam_s']:.2f} | "
            f"{r['sam_fps']:.1f} | {r['total_fps']:.1f} | {r['peak_gib']:.2f} | {r['weights_gib']:.2f} |"
        )
    if batch_rows:
        lines += [
            "",
            f"Batched vs one at a time: {args.expressions} expressions of one video (forced answer \"Sure, [SEG].\"), "
            f"LLM batch {args.expressions}, every expression's object in one SAM-2 batch.",
            "",
            "Batched: SAM-2 image features shared, each expression's object its own SAM-2 batch (the default, "
            "masks equal to one at a time); one SAM-2 batch: all objects of the video in one batch.",
            "",
            "| model | frames | expressions | one at a time s | batched s | speed-up | one SAM-2 batch s | speed-up | "
            "expr-frames/s one / batched / one batch | peak GiB one / batched / one batch | masks equal: batched, "
            "one batch |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in batch_rows:
            e, n = r["expressions"], r["frames"]
            lines.append(
                f"| {r['model']} | {n} | {e} | {r['single_s']:.2f} | {r['batched_s']:.2f} | "
                f"{r['single_s'] / r['batched_s']:.1f}x | {r['one_batch_s']:.2f} | {r['single_s'] / r['one_batch_s']:.1f}x | "
                f"{e * n / r['single_s']:.1f} / {e * n / r['batched_s']:.1f} / {e * n / r['one_batch_s']:.1f} | "
                f"{r['single_peak_gib']:.2f} / {r['batched_peak_gib']:.2f} / {r['one_batch_peak_gib']:.2f} | "
                f"{r['masks_equal']}, {r['one_batch_equal']} |"
            )
    if image_rows:
        lines += [
            "",
            f"Image prediction latency: one {height}x{width} image, forced answer \"Sure, [SEG].\" (tiles, LLM "
            f"forward, SAM-2 encoder and decoder, mask at full size), {image_rows[0]['runs']} runs.",
            "",
            "| model | median ms | min ms | peak GPU GiB |",
            "|---|---:|---:|---:|",
        ]
        lines += [f"| {r['model']} | {r['median_s'] * 1000:.0f} | {r['min_s'] * 1000:.0f} | {r['peak_gib']:.2f} |"
                  for r in image_rows]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        from refsav.schemas.io import atomic_write_text

        atomic_write_text(args.out, table)
    if cuda:
        from perf.readme import update_section

        update_section("bench_model_gpu", f"## Sa2VA speed and memory on GPU\n\n`python perf/bench_model_gpu.py`\n\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
