"""`refsav model ...`: commands around the reference models.

Registered in the root CLI as the `model` group; torch and transformers are
imported only when a subcommand runs.
"""
from __future__ import annotations

import click

DTYPES = ("float32", "bfloat16", "float16")


@click.group("model")
def model_group() -> None:
    """Sa2VA reference models: random-weight checkpoints for tests and speed runs."""


@model_group.command("init-random")
@click.option("--size", type=click.Choice(["tiny", "1b", "4b"]), default="tiny", show_default=True,
              help="tiny: CPU tests; 1b / 4b: the released Sa2VA-1B / -4B shapes.")
@click.option("--base", type=click.Choice(["internvl", "qwen2.5-vl"]), default="internvl", show_default=True,
              help="VLM family (qwen2.5-vl has tiny and 4b = Sa2VA-Qwen2_5-VL-3B shapes).")
@click.option("--out", "out", type=click.Path(file_okay=False), required=True, help="Checkpoint folder to write.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True,
              help="Storage dtype (released checkpoints are float32; bfloat16 halves the files).")
@click.option("--shard-gb", type=float, default=2.0, show_default=True, help="Largest safetensors shard, in GiB.")
def init_random_command(size: str, base: str, out: str, seed: int, dtype: str, shard_gb: float) -> None:
    """Write a random-weight Sa2VA checkpoint in the released layout and shapes."""
    import time

    import torch

    from .random_init import write_random_checkpoint

    t0 = time.perf_counter()
    ckpt = write_random_checkpoint(out, size, base, seed=seed, dtype=getattr(torch, dtype),
                                   max_shard_bytes=int(shard_gb * 1024**3))
    click.echo(
        f"wrote {ckpt.path}: Sa2VA {size} on {base}, {ckpt.num_parameters / 1e6:.1f} M parameters "
        f"({dtype}, {len(ckpt.files)} file(s)) in {time.perf_counter() - t0:.1f} s; random weights"
    )


__all__ = ["model_group"]
