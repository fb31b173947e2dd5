"""`refsav model ...`: commands around the reference models.

Registered in the root CLI as the `model` group; torch and transformers are
imported only when a subcommand runs. Bad input raises `SchemaError`, which the
root entry point (`refsav.cli.main`) prints as one line with exit code 2.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

DTYPES = ("float32", "bfloat16", "float16")


@click.group("model")
def model_group() -> None:
    """Sa2VA reference models: random-weight checkpoints, DeSa2VA head training."""


@model_group.command("init-random")
@click.option("--size", type=click.Choice(["tiny", "1b", "4b"]), default="tiny", show_default=True,
              help="tiny: CPU tests; 1b / 4b: the released Sa2VA-1B / -4B shapes.")
@click.option("--base", type=click.Choice(["internvl", "qwen2.5-vl", "qwen3-vl"]), default="internvl",
              show_default=True,
              help="VLM family (qwen2.5-vl has tiny and 4b = Sa2VA-Qwen2_5-VL-3B shapes; qwen3-vl has tiny only).")
@click.option("--out", "out", type=click.Path(file_okay=False), required=True, help="Checkpoint folder to write.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True,
              help="Storage dtype (released checkpoints are float32; bfloat16 halves the files).")
@click.option("--shard-gb", type=float, default=2.0, show_default=True, help="Largest safetensors shard, in GiB.")
@click.option("--layout", type=click.Choice(["sa2va", "sa2va-i"]), default="sa2va", show_default=True,
              help="sa2va-i: also write a second SAM-2 mask decoder in the Sa2VA-i two-decoder layout "
                   "(fine-tuned under sam_mask_decoder_modified, the stand-in for Meta's under sam_mask_decoder).")
def init_random_command(size: str, base: str, out: str, seed: int, dtype: str, shard_gb: float, layout: str) -> None:
    """Write a random-weight Sa2VA checkpoint in the released layout and shapes."""
    import time

    import torch

    from .random_init import write_random_checkpoint

    t0 = time.perf_counter()
    ckpt = write_random_checkpoint(out, size, base, seed=seed, dtype=getattr(torch, dtype),
                                   max_shard_bytes=int(shard_gb * 1024**3), layout=layout)
    click.echo(
        f"wrote {ckpt.path}: Sa2VA{'-i layout' if layout == 'sa2va-i' else ''} {size} on {base}, {ckpt.num_parameters / 1e6:.1f} M parameters "
        f"({dtype}, {len(ckpt.files)} file(s)) in {time.perf_counter() - t0:.1f} s; random weights"
    )


@model_group.command("convert-sam2")
@click.option("--in", "src", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Meta's SAM-2 checkpoint, e.g. sam2_hiera_large.pt (read with torch.load(weights_only=True)).")
@click.option("--out", "dst", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The safetensors copy to write (.safetensors).")
def convert_sam2_command(src: Path, dst: Path) -> None:
    """Copy Meta's SAM-2 .pt file to safetensors, for `predict --inference sa2va-i --sam2-original`."""
    from .checkpoint import convert_sam2

    count = convert_sam2(src, dst)
    click.echo(f"wrote {dst}: {count} tensors from {src.name}")


HEADS_LOG_FORMAT = "refsav-desa2va-train-log/1"


def heads_log_path(heads: Path) -> Path:
    """The JSON training log written beside a heads file: X.safetensors → X.log.json."""
    return heads.with_suffix(".log.json")


@model_group.command("train-heads")
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path),
              help="Sa2VA checkpoint folder (released layout); stays frozen.")
@click.option("--data", "data", required=True, type=click.Path(path_type=Path),
              help="A `refsav annotate` output folder (run.json + data/*.parquet).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Heads file to write (.safetensors); a training log goes beside it (.log.json).")
@click.option("--steps", type=click.IntRange(1), default=200, show_default=True, help="Optimiser steps.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True, help="AdamW rate.")
@click.option("--batch-size", type=click.IntRange(1), default=4, show_default=True, help="Samples per step.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the point and gate layers.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--text", "text", type=click.Choice(["formated", "short"]), default="formated", show_default=True,
              help="Referring text: the long `formated` expression or the first short caption.")
@click.option("--frames-per-expression", type=click.IntRange(1), default=1, show_default=True,
              help="Annotated frames (object visible) per expression, spread over the masklet.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N expressions.")
@click.option("--init-heads", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Start from these heads (e.g. a previous run) instead of copies of text_hidden_fcs.")
@click.option("--allow-pickle", is_flag=True, default=False,
              help="Also read pickle weight files (.bin/.pt/.pth) of --model, through torch.load(weights_only=True). "
                   "Default: safetensors only.")
def train_heads_command(model_path: Path, data: Path, out: Path, steps: int, lr: float, batch_size: int, seed: int,
                        device: str, text: str, frames_per_expression: int, limit: int | None,
                        init_heads: Path | None, allow_pickle: bool) -> None:
    """Train DeSa2VA's decoupling heads on annotate output; the LLM and SAM-2 stay frozen."""
    import math
    import time
    from dataclasses import asdict

    from refsav.schemas.errors import RefsavError, SchemaError
    from refsav.schemas.io import atomic_write_json, sha256_file

    from .checkpoint import read_config
    from .desa2va import DeSa2VA, load_heads, save_heads
    from .predict import _load_model
    from .train_heads import TrainConfig, load_samples, prepare, train_heads

    t0 = time.perf_counter()
    if out.suffix != ".safetensors":
        raise RefsavError("the heads file must end in .safetensors", file=out)
    if not model_path.is_dir():
        raise SchemaError("not a checkpoint folder", file=model_path)
    samples = load_samples(data, text=text, frames_per_object=frames_per_expression, limit=limit)
    if not samples:
        raise SchemaError("no training samples: no expression has an annotated frame with its object visible",
                          file=data)
    expressions = len({(s.video_id, s.object_id) for s in samples})
    # config.json only: misfitting heads fail before the model loads.
    start = load_heads(init_heads, read_config(model_path).llm_hidden_size) if init_heads is not None else None

    sa2va = _load_model(str(model_path), "float32", device, allow_pickle)
    if start is not None:
        model = DeSa2VA.with_heads(sa2va, start)
    else:
        model = DeSa2VA.from_sa2va(sa2va, seed=seed)
    config = TrainConfig(steps=steps, lr=lr, batch_size=batch_size)

    # Frozen LLM + SAM-2 features once per sample, then head-only steps.
    with click.progressbar(length=len(samples), label="encoding samples", file=sys.stderr) as bar:
        prepared = prepare(model, samples, on_item=lambda _s: bar.update(1))
    with click.progressbar(length=steps, label="training heads", file=sys.stderr,
                           item_show_func=lambda e: f"loss {e.total:.4f}" if e is not None else None) as bar:
        result = train_heads(model, prepared, config, log=lambda e: bar.update(1, e))
    history = result.history
    bad = next((e for e in history if not all(map(math.isfinite, (e.text, e.vision, e.fused, e.total)))), None)
    if bad is not None:
        raise click.ClickException(f"training diverged: the loss is not finite at step {bad.step}; "
                                   "try a lower --lr. Nothing written.")

    save_heads(out, result.heads)
    first, last = history[0], history[-1]
    log = {
        "format": HEADS_LOG_FORMAT,
        "heads": out.name,
        "heads_sha256": sha256_file(out),
        "model": str(model_path.resolve()),
        "data": str(data.resolve()),
        "init_heads": str(init_heads.resolve()) if init_heads is not None else None,
        "options": {"text": text, "frames_per_expression": frames_per_expression, "limit": limit, "seed": seed,
                    "device": device},
        "train_config": asdict(config),
        "heads_config": asdict(result.heads.config),
        "samples": len(samples),
        "expressions": expressions,
        "steps": len(history),
        "loss_first": asdict(first),
        "loss_last": asdict(last),
        "loss_total": [e.total for e in history],
        "seconds": round(time.perf_counter() - t0, 3),
    }
    atomic_write_json(heads_log_path(out), log, indent=1)
    click.echo(
        f"wrote {out}: DeSa2VA heads, {len(history)} steps on {len(samples)} samples ({expressions} expressions); "
        f"loss {first.total:.4f} -> {last.total:.4f} (text {first.text:.3f} -> {last.text:.3f}, vision "
        f"{first.vision:.3f} -> {last.vision:.3f}, fused {first.fused:.3f} -> {last.fused:.3f}) "
        f"in {time.perf_counter() - t0:.1f} s; log {heads_log_path(out).name}"
    )


__all__ = ["heads_log_path", "model_group"]
