"""`refsav schema`: the submission formats as JSON Schema."""
from __future__ import annotations

import json
from pathlib import Path

import click

from refsav.schemas.io import atomic_write_json
from refsav.schemas.submission import submission_schemas


@click.command("schema")
@click.argument("name", required=False)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Write one <name>.schema.json per format here.")
def schema_command(name: str | None, out: Path | None) -> None:
    """Print the JSON Schema of submission format NAME (all formats when omitted)."""
    schemas = submission_schemas()
    if name is not None and name not in schemas:
        raise click.BadParameter(f"unknown format {name!r}; choose from {', '.join(sorted(schemas))}", param_hint="NAME")
    chosen = {name: schemas[name]} if name else schemas
    if out is None:
        click.echo(json.dumps(chosen[name] if name else chosen, indent=2))
        return
    for key, schema in chosen.items():
        atomic_write_json(out / f"{key}.schema.json", schema, indent=2)
        click.echo(f"wrote {out / f'{key}.schema.json'}")
