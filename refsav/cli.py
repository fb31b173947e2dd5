"""The `refsav` command. Subcommands are imported only when used, so that
`refsav --help` stays fast and a command never pays for torch it does not need."""
from __future__ import annotations

import importlib
import os
import sys

import click

# name -> (module, attribute, help line); each package owns its own commands.
# Commands are listed in --help by capability, in this order.
SECTIONS = {
    "Data": {
        "sample": ("refsav.pipelines.sample", "sample_command", "Generate a synthetic SA-V sample and its Ref-SAV benchmark split."),
        "annotate": ("refsav.grounding", "annotate_command", "Describe SA-V masklets with a VLM (3 stages) into Parquet shards."),
        "publish": ("refsav.pipelines.publish", "publish_command", "Publish an annotation run as a Hugging Face dataset (card, splits)."),
        "export": ("refsav.pipelines.export", "export_group", "Write Ref-SAV training JSON or a Ref-SAV-style benchmark from a run."),
        "validate": ("refsav.pipelines.validate", "validate_command", "Check SA-V, Ref-SAV, benchmark, Parquet and mp4 files."),
        "schema": ("refsav.pipelines.cli_schema", "schema_command", "Export the submission formats as JSON Schema."),
    },
    "Scoring": {
        "score": ("refsav.benchmark.cli", "score_command", "Score predictions with an official protocol (J, F, J&F ...)."),
        "leaderboard": ("refsav.benchmark.cli", "leaderboard_command", "Render a leaderboard: Markdown, HTML, JSON, charts."),
    },
    "Models": {
        "predict": ("refsav.model.predict", "predict_command", "Run a Sa2VA checkpoint over a benchmark; resumable, multi-GPU."),
        "evaluate": ("refsav.evaluate", "evaluate_command", "Predict, score, and add a leaderboard entry."),
        "serve": ("refsav.model.serve", "serve_command", "Serve a Sa2VA checkpoint over an OpenAI-compatible HTTP API (extra: serve)."),
        "model": ("refsav.model.cli", "model_group", "Sa2VA reference models: random-weight checkpoints (init-random), DeSa2VA heads (train-heads)."),
    },
    "End to end": {
        "demo": ("refsav.demo", "demo_command", "Run the end-to-end demo on generated data."),
    },
}
COMMANDS = {name: spec for section in SECTIONS.values() for name, spec in section.items()}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Describe commands from the table above instead of importing every module.
        for title, commands in SECTIONS.items():
            with formatter.section(title):
                formatter.write_dl([(name, spec[2]) for name, spec in commands.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="refsav")
def cli() -> None:
    """refsav: build referring video datasets, score referring segmentation, run Sa2VA."""


# The libraries' own tqdm bars (model loading, dataset building) would tear refsav's rich
# progress display apart; environment variables so that worker processes inherit them. A
# user who wants the bars back sets them to 0.
QUIET_LIBRARY_BARS = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


def main(argv: list[str] | None = None) -> int:
    """Entry point; bad input becomes a one-line error and exit code 2, never a traceback."""
    from refsav.schemas.errors import RefsavError

    for name, value in QUIET_LIBRARY_BARS.items():
        os.environ.setdefault(name, value)

    try:
        cli.main(args=argv, prog_name="refsav", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except RefsavError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
