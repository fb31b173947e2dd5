"""`refsav annotate`."""
from __future__ import annotations

from pathlib import Path

import click

from .config import DEFAULT_STAGES, AnnotateConfig, VLMSettings
from .run import DEFAULT_SHARD_SIZE, RunSummary, annotate


def _stage_list(stages: str, plugins: tuple[str, ...], no_check: bool) -> tuple[str, ...]:
    """The run's stage list, checked here so that a bad one costs no cluster start."""
    import importlib

    from .registry import resolve

    for module in plugins:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise click.UsageError(f"--plugin {module}: cannot import it ({err})") from None
    names = tuple(n.strip() for n in stages.split(",") if n.strip())
    if no_check:
        names = tuple(n for n in names if n != "check")
    resolve(names)
    return names


def _print_summary(s: RunSummary) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="refsav annotate", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("shards done / total", f"{s.shards_done} / {s.shards}" + (f" ({s.shards_resumed} already complete)" if s.shards_resumed else ""))
    table.add_row("videos (skipped)", f"{s.videos} ({s.videos_skipped})")
    table.add_row("objects seen", str(s.objects_seen))
    table.add_row("objects kept", str(s.objects_kept))
    for reason, n in sorted(s.objects_dropped.items()):
        table.add_row(f"  dropped: {reason}", str(n))
    table.add_row("flagged ambiguous", str(s.ambiguous))
    table.add_row("VLM calls (cache hits, failed)", f"{s.vlm.calls} ({s.vlm.cache_hits}, {s.vlm.failed_calls})")
    table.add_row("tokens in / out", f"{s.vlm.prompt_tokens} / {s.vlm.completion_tokens}")
    table.add_row("wall time", f"{s.seconds:.1f} s")
    Console(stderr=True).print(table)


@click.command("annotate")
@click.option("--input", "input_root", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="SA-V folder: <id>.mp4 with <id>_manual.json (searched recursively).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: data/*.parquet shards, stats/, markers/, run.json. Rerun to resume.")
@click.option("--vlm", "backend", default="openai", show_default=True, type=click.Choice(["openai", "transformers", "lmdeploy"]),
              help="VLM backend: an OpenAI-compatible server, or in-process transformers / lmdeploy.")
@click.option("--base-url", default=None, help="OpenAI-compatible server, e.g. http://127.0.0.1:23333/v1.")
@click.option("--model", required=True, help="Model name on the server, or a local path / hub id for in-process backends.")
@click.option("--check-model", default=None, help="Model for the consistency check (default: --model).")
@click.option("--check-base-url", default=None, help="Server of the check model (default: --base-url).")
@click.option("--no-check", is_flag=True, help="Skip the consistency check (keeps every description).")
@click.option("--stages", default=",".join(DEFAULT_STAGES), show_default=True,
              help="Annotation stages, in order, comma-separated (registered stages; see --plugin).")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE",
              help="Import this Python module first (repeatable); it may register more stages with "
                   "refsav.pipelines.annotate.registry.register. Workers must be able to import it too.")
@click.option("--highlight", default="contour", show_default=True, type=click.Choice(["contour", "tint", "box", "crop"]),
              help="How the object is shown to the VLM.")
@click.option("--masklets", default="manual", show_default=True, type=click.Choice(["manual", "auto", "both"]),
              help="Which SA-V masklets to annotate.")
@click.option("--workers", default=None, type=click.IntRange(1), help="Local Dask workers (default: all cores; 1 = run in this process).")
@click.option("--scheduler", default=None, help="Run on an existing Dask cluster, e.g. tcp://host:8786.")
@click.option("--limit", default=None, type=click.IntRange(1), help="Only the first K videos (sorted by id).")
@click.option("--shard-size", default=DEFAULT_SHARD_SIZE, show_default=True, type=click.IntRange(1), help="Videos per shard.")
@click.option("--max-in-flight", default=8, show_default=True, type=click.IntRange(1), help="VLM requests in flight per worker.")
@click.option("--timeout", default=120.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds per VLM request.")
@click.option("--retries", default=3, show_default=True, type=click.IntRange(0), help="Retries per VLM request, with backoff.")
@click.option("--max-tokens", default=256, show_default=True, type=click.IntRange(1), help="Tokens per answer.")
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(min=0.0), help="Sampling temperature (0 = greedy).")
@click.option("--prompts", "prompts_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="Folder of prompt templates (<stage>.v<N>.txt) replacing the built-in ones.")
@click.option("--cache", "cache_path", default=None, type=click.Path(dir_okay=False),
              help="Request cache (SQLite; default OUT/cache/requests.sqlite). 'none' disables it.")
@click.option("--retry-failed", is_flag=True, help="Redo shards where objects failed on VLM errors.")
def annotate_command(input_root, out, backend, base_url, model, check_model, check_base_url, no_check, stages, plugins,
                     highlight, masklets, workers, scheduler, limit, shard_size, max_in_flight, timeout, retries, max_tokens, temperature,
                     prompts_dir, cache_path, retry_failed) -> None:
    """Describe every SA-V masklet with a VLM in three stages and write Ref-SAV-style expressions."""
    from refsav.runtime.executor import make_executor
    from refsav.schemas.version import __version__

    if backend == "openai" and not base_url:
        raise click.UsageError("--vlm openai needs --base-url (e.g. http://127.0.0.1:23333/v1)")
    stage_list = _stage_list(stages, plugins, no_check)
    vlm = VLMSettings(backend=backend, model=model, base_url=base_url, max_in_flight=max_in_flight, timeout=timeout,
                      max_retries=retries, max_tokens=max_tokens, temperature=temperature)
    checker = None
    if check_model or check_base_url:
        checker = VLMSettings(backend=backend, model=check_model or model, base_url=check_base_url or base_url,
                              max_in_flight=max_in_flight, timeout=timeout, max_retries=retries,
                              max_tokens=max_tokens, temperature=temperature)
    if cache_path is None:
        cache_path = str(Path(out) / "cache" / "requests.sqlite")
    config = AnnotateConfig(
        vlm=vlm, checker=checker, stages=stage_list,
        highlight=highlight, masklets=masklets,
        prompts_dir=prompts_dir, cache_path=None if cache_path == "none" else str(Path(cache_path).resolve()),
        toolkit_version=__version__,
    )
    with make_executor(workers, scheduler) as executor:
        summary = annotate(input_root, out, config, executor, limit=limit, shard_size=shard_size,
                           retry_failed=retry_failed)
    _print_summary(summary)
    click.echo(f"wrote {summary.objects_kept} expressions to {Path(out) / 'data'}; stats in {Path(out) / 'run.json'}")
    if summary.shards_failed:
        for f in summary.shards_failed[:20]:
            click.echo(f"  shard {f.shard}: {f.error}", err=True)
        raise click.ClickException(f"{len(summary.shards_failed)} shard(s) failed; rerun the same command to retry them")
