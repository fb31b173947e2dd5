"""`refsav annotate`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import click

from .config import DEFAULT_STAGES, AnnotateConfig, VLMSettings
from .grounding import DEFAULT_AMBIGUITY_MARGIN, DEFAULT_MARGIN, DEFAULT_MIN_GROUNDING
from .run import DEFAULT_SHARD_SIZE, RunSummary, annotate

if TYPE_CHECKING:
    from .grounding import GroundingSettings


@dataclass(frozen=True)
class GrounderArgs:
    """The grounding options of `refsav annotate`, as given."""

    grounder: str  # sa2va:CKPT or http(s)://host:port/v1
    inference: str = "official"
    api_key: str | None = None
    force_answer: str | None = None
    device: str | None = None
    min_grounding: float = DEFAULT_MIN_GROUNDING
    ambiguity_margin: float = DEFAULT_AMBIGUITY_MARGIN
    margin: int = DEFAULT_MARGIN
    max_in_flight: int = 2  # objects per worker at the server at once (each sends its expressions in turn)
    timeout: float = 600.0  # seconds per server request


# How a --grounder value becomes the grounder and scorer objects. This package may not
# import a model or the benchmark: the application layer (refsav.grounding) installs it,
# and `refsav annotate` is that layer's command.
_RESOLVER: list[Callable[[GrounderArgs], "GroundingSettings"]] = []


def set_grounder_resolver(resolver: Callable[[GrounderArgs], "GroundingSettings"]) -> None:
    _RESOLVER[:] = [resolver]


def _grounding(args: GrounderArgs) -> "GroundingSettings":
    if not _RESOLVER:
        raise click.UsageError("--grounder needs the refsav command (refsav.grounding wires the model in)")
    return _RESOLVER[0](args)


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
    if s.grounding is not None:
        g = s.grounding
        table.add_row("grounded (dropped, flagged)", f"{g.grounded} ({g.dropped}, {g.flagged_ambiguous})")
        table.add_row("short expressions removed", str(g.shorts_removed))
        if g.deciles:
            table.add_row("grounding J&F min / median / max", f"{g.deciles[0]:.3f} / {g.deciles[5]:.3f} / {g.deciles[-1]:.3f}")
        table.add_row("grounder calls (cache hits, failed)",
                      f"{g.grounder.calls} ({g.grounder.cache_hits}, {g.grounder.failed_calls})")
    table.add_row("VLM calls (cache hits, failed)", f"{s.vlm.calls} ({s.vlm.cache_hits}, {s.vlm.failed_calls})")
    table.add_row("tokens in / out", f"{s.vlm.prompt_tokens} / {s.vlm.completion_tokens}")
    table.add_row("wall time", f"{s.seconds:.1f} s")
    Console(stderr=True).print(table)


class _RecordsArgs(click.Command):
    """Keeps the arguments as given, so that a failed run can print the command that resumes it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["refsav.annotate.args"] = list(args)
        return super().parse_args(ctx, args)


def _resume_command(ctx: click.Context) -> str:
    import shlex

    return f"{ctx.command_path} {shlex.join(ctx.meta.get('refsav.annotate.args', []))}".strip()


def _report_failures(s: RunSummary, resume: str) -> None:
    """Exit non-zero, saying why and how to go on, unless the run has rows and nothing to redo."""
    if s.complete and s.objects_kept:
        return
    for f in s.shards_failed[:20]:
        click.echo(f"  shard {f.shard}: {f.error}", err=True)
    problems = []
    if s.shards_failed:
        problems.append(f"{len(s.shards_failed)} shard(s) failed")
    if s.objects_failed:
        problems.append(f"{s.objects_failed} object(s) failed on the VLM or the grounder (server errors, timeouts "
                        "or malformed answers, after retries)")
    if s.first_error:
        click.echo(f"first error: {s.first_error}", err=True)
    if problems:
        click.echo(f"rerun the same command to retry them (answers already received come from the cache):\n  {resume}",
                   err=True)
    if not s.objects_kept:
        why = [f"{k}: {n}" for k, n in sorted(s.objects_dropped.items())]
        if s.videos_skipped:
            why.append(f"videos skipped: {s.videos_skipped}")
        problems.append(f"no row was kept ({', '.join(why) or 'no objects'})")
    raise click.ClickException("; ".join(problems))


@click.command("annotate", cls=_RecordsArgs)
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
@click.option("--retries", default=3, show_default=True, type=click.IntRange(0),
              help="Retries per VLM request (server errors, timeouts, malformed answers), with backoff.")
@click.option("--backoff", default=1.0, show_default=True, type=click.FloatRange(min=0.0),
              help="Seconds before a request's first retry (--vlm openai); doubled for each next one, at most 30 s.")
@click.option("--max-tokens", default=256, show_default=True, type=click.IntRange(1), help="Tokens per answer.")
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(min=0.0), help="Sampling temperature (0 = greedy).")
@click.option("--prompts", "prompts_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="Folder of prompt templates (<stage>.v<N>.txt) replacing the built-in ones.")
@click.option("--cache", "cache_path", default=None, type=click.Path(dir_okay=False),
              help="Request cache (SQLite; default OUT/cache/requests.sqlite). 'none' disables it.")
@click.option("--grounder", default=None, metavar="sa2va:CKPT|URL",
              help="Ground every expression back to its masklet after merge: sa2va:CKPT (a Sa2VA checkpoint in "
                   "each worker) or http://host:port/v1 (a `refsav serve` endpoint).")
@click.option("--min-grounding", default=DEFAULT_MIN_GROUNDING, show_default=True, type=click.FloatRange(0, 1),
              help="Drop an object (grounding_failed) whose long expression's J&F is below this; remove a short "
                   "expression below it.")
@click.option("--ambiguity-margin", default=DEFAULT_AMBIGUITY_MARGIN, show_default=True, type=click.FloatRange(0, 1),
              help="Flag an object ambiguous when another masklet's J&F comes within this of its own, or above.")
@click.option("--grounding-margin", default=DEFAULT_MARGIN, show_default=True, type=click.IntRange(0),
              help="Annotated frames before and after the object's visible span that are segmented and scored too.")
@click.option("--grounder-inference", default="official", show_default=True, type=click.Choice(["official", "sa2va-i"]),
              help="Sa2VA inference mode of the grounder (recorded in the provenance).")
@click.option("--grounder-api-key", default=None, envvar="REFSAV_API_KEY",
              help="Key of the `refsav serve` endpoint (or $REFSAV_API_KEY); never recorded.")
@click.option("--grounder-max-in-flight", default=2, show_default=True, type=click.IntRange(1),
              help="Objects per worker grounded at once by a `refsav serve` endpoint (keep workers x this under "
                   "the server's --max-queue).")
@click.option("--grounder-timeout", default=600.0, show_default=True, type=click.FloatRange(min=1.0),
              help="Seconds per request to a `refsav serve` endpoint.")
@click.option("--grounder-device", default=None, help="Device of an in-process grounder (default: cuda if visible, else cpu).")
@click.option("--grounder-force-answer", default=None, hidden=True,
              help="Teacher-force the grounder's answer (e.g. 'Sure, [SEG].'): tests and speed runs only.")
@click.pass_context
def annotate_command(ctx, input_root, out, backend, base_url, model, check_model, check_base_url, no_check, stages, plugins,
                     highlight, masklets, workers, scheduler, limit, shard_size, max_in_flight, timeout, retries, backoff,
                     max_tokens, temperature, prompts_dir, cache_path, grounder, min_grounding, ambiguity_margin,
                     grounding_margin, grounder_inference, grounder_api_key, grounder_max_in_flight, grounder_timeout,
                     grounder_device, grounder_force_answer) -> None:
    """Describe every SA-V masklet with a VLM in three stages and write Ref-SAV-style expressions.

    Rerun the same command to resume: finished shards are kept, the others are redone, with
    the answers already received taken from the request cache. The exit code is 0 only when
    rows were kept and no object failed on the VLM."""
    from refsav.runtime.executor import make_executor
    from refsav.schemas.version import __version__

    if backend == "openai" and not base_url:
        raise click.UsageError("--vlm openai needs --base-url (e.g. http://127.0.0.1:23333/v1)")
    stage_list = _stage_list(stages, plugins, no_check)
    grounding = None
    if grounder is not None:
        if "grounding" not in stage_list:
            stage_list = (*stage_list, "grounding")
        grounding = _grounding(GrounderArgs(grounder, grounder_inference, grounder_api_key, grounder_force_answer,
                                            grounder_device, min_grounding, ambiguity_margin, grounding_margin,
                                            grounder_max_in_flight, grounder_timeout))
    elif "grounding" in stage_list:
        raise click.UsageError("the grounding stage needs --grounder")
    vlm = VLMSettings(backend=backend, model=model, base_url=base_url, max_in_flight=max_in_flight, timeout=timeout,
                      max_retries=retries, backoff=backoff, max_tokens=max_tokens, temperature=temperature)
    checker = None
    if check_model or check_base_url:
        checker = VLMSettings(backend=backend, model=check_model or model, base_url=check_base_url or base_url,
                              max_in_flight=max_in_flight, timeout=timeout, max_retries=retries, backoff=backoff,
                              max_tokens=max_tokens, temperature=temperature)
    if cache_path is None:
        cache_path = str(Path(out) / "cache" / "requests.sqlite")
    config = AnnotateConfig(
        vlm=vlm, checker=checker, stages=stage_list,
        highlight=highlight, masklets=masklets,
        prompts_dir=prompts_dir, cache_path=None if cache_path == "none" else str(Path(cache_path).resolve()),
        toolkit_version=__version__,
        grounding=grounding,
    )
    # An in-process grounder on CUDA: every shard holds one GPU (Dask resource GPU=1).
    with make_executor(workers, scheduler, gpus=bool(grounding and grounding.grounder.needs_gpu)) as executor:
        # From here a server on 127.0.0.1 is this machine's; the workers of a cluster given by
        # --scheduler may see another one, so there the requests alone tell.
        summary = annotate(input_root, out, config, executor, limit=limit, shard_size=shard_size,
                           preflight=scheduler is None)
    _print_summary(summary)
    click.echo(f"wrote {summary.objects_kept} expressions to {Path(out) / 'data'}; stats in {Path(out) / 'run.json'}")
    _report_failures(summary, _resume_command(ctx))
