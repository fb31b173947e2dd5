"""`refsav model train-heads`: DeSa2VA head training from the command line.

A tiny random Sa2VA (test_model's `tiny_dir`, written by `refsav model init-random`)
trains its heads on a synthetic `refsav annotate` output (annotated_fixture), through
the real root CLI.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

import refsav.cli as root_cli
from annotated_fixture import build_annotated
from refsav.model.cli import heads_log_path
from refsav.model.desa2va import DeSa2VAConfig, DecoupleHeads, load_heads, save_heads
from refsav.schemas.io import sha256_file
from test_model import one_thread, tiny_dir  # noqa: F401 - fixtures: one torch thread, a tiny Sa2VA checkpoint

STEPS = 25


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    return build_annotated(tmp_path_factory.mktemp("train_cli"), videos=2, objects=2, frames=8, width=96, height=64)


def _train_args(tiny_dir, data, out, *extra):
    return ["model", "train-heads", "--model", str(tiny_dir), "--data", str(data), "--out", str(out), *map(str, extra)]


@pytest.fixture(scope="module")
def trained(tiny_dir, annotated, tmp_path_factory):
    out = tmp_path_factory.mktemp("heads") / "heads.safetensors"
    args = _train_args(tiny_dir, annotated.out, out, "--steps", STEPS, "--lr", "1e-2", "--batch-size", 3,
                       "--text", "short", "--seed", 3)
    res = CliRunner().invoke(root_cli.cli, args)
    assert res.exit_code == 0, res.output
    return out, res.output


@pytest.fixture()
def cli():
    """`refsav ...` through the real entry point (SchemaError → one line, exit code 2)."""
    return lambda *args: root_cli.main([str(a) for a in args])


def test_heads_reload_and_the_log_shows_the_loss_going_down(trained, tiny_dir, annotated):
    out, output = trained
    summary = [line for line in output.splitlines() if line.startswith("wrote ")]
    assert len(summary) == 1 and str(out) in summary[0] and f"{STEPS} steps on 3 samples" in summary[0]

    heads = load_heads(out)
    assert heads.config.hidden_size == heads.text[0].weight.shape[1]

    log = json.loads(heads_log_path(out).read_text())
    assert log["heads_sha256"] == sha256_file(out)
    assert log["steps"] == STEPS == len(log["loss_total"])
    assert log["samples"] == len(annotated.expressions) == 3 and log["expressions"] == 3
    assert log["train_config"] == {"steps": STEPS, "lr": 1e-2, "weight_decay": 0.01, "batch_size": 3}
    assert log["heads_config"]["hidden_size"] == heads.config.hidden_size
    assert log["options"]["text"] == "short" and log["options"]["seed"] == 3
    first, last = log["loss_first"], log["loss_last"]
    assert all(math.isfinite(x) for x in log["loss_total"])
    assert first["total"] == log["loss_total"][0] and last["total"] == log["loss_total"][-1]
    # test_desa2va trains the same heads in-process: 40 steps cut every term by > 20 %.
    assert last["total"] < 0.9 * first["total"], (first, last)
    assert last["fused"] < first["fused"]


def test_training_moved_the_heads_away_from_sa2va(trained, tiny_dir):
    from refsav.model.checkpoint import load_sa2va

    heads = load_heads(trained[0])
    fcs = load_sa2va(tiny_dir).model.text_hidden_fcs.state_dict()
    # Both projections start as copies of text_hidden_fcs; training changed them.
    for part in (heads.text, heads.vision):
        sd = part.state_dict()
        assert sd.keys() == fcs.keys() and not all(torch.equal(sd[k], fcs[k]) for k in fcs)


def test_limit_and_init_heads_continue_from_a_previous_run(trained, tiny_dir, annotated, tmp_path):
    out = tmp_path / "more.safetensors"
    args = _train_args(tiny_dir, annotated.out, out, "--steps", 2, "--limit", 1, "--frames-per-expression", 2,
                       "--init-heads", trained[0])
    res = CliRunner().invoke(root_cli.cli, args)
    assert res.exit_code == 0, res.output
    log = json.loads(heads_log_path(out).read_text())
    assert log["samples"] == 2 and log["expressions"] == 1 and log["steps"] == 2
    assert log["init_heads"] == str(trained[0].resolve())
    # Started from the trained heads, not from fresh copies: the first loss is the
    # trained run's level, well below its own first step.
    before = json.loads(heads_log_path(trained[0]).read_text())
    assert log["loss_first"]["total"] < before["loss_first"]["total"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_bad_inputs_are_one_line_errors(trained, tiny_dir, annotated, tmp_path, cli, capsys):
    heads = tmp_path / "h.safetensors"
    assert cli(*_train_args(tiny_dir, tmp_path / "missing", heads)) == 2
    err = _one_line_error(capsys)
    assert "missing" in err and "annotate" in err

    no_shards = tmp_path / "no_shards"
    (no_shards / "data").mkdir(parents=True)
    (no_shards / "run.json").write_text(json.dumps({"input": str(annotated.sample)}))
    assert cli(*_train_args(tiny_dir, no_shards, heads)) == 2
    assert "no Parquet shards" in _one_line_error(capsys)

    no_run = tmp_path / "no_run"
    no_run.mkdir()
    assert cli(*_train_args(tiny_dir, no_run, heads)) == 2
    assert "run.json" in _one_line_error(capsys)

    assert cli(*_train_args(tmp_path / "nockpt", annotated.out, heads)) == 2
    assert "nockpt" in _one_line_error(capsys)

    assert cli(*_train_args(tiny_dir, annotated.out, tmp_path / "heads.bin")) == 2
    assert ".safetensors" in _one_line_error(capsys)

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    assert cli(*_train_args(tiny_dir, annotated.out, heads, "--init-heads", junk)) == 2
    assert "junk.safetensors" in _one_line_error(capsys)

    # Heads made for another LLM width: refused once the model is loaded, naming the file.
    hidden = load_heads(trained[0]).config.hidden_size
    wrong = save_heads(tmp_path / "wrong.safetensors", DecoupleHeads(DeSa2VAConfig(hidden_size=hidden + 8)))
    assert cli(*_train_args(tiny_dir, annotated.out, heads, "--init-heads", wrong, "--steps", 1)) == 2
    err = _one_line_error(capsys)
    assert "wrong.safetensors" in err and "hidden size" in err and str(hidden) in err
    assert not heads.exists() and not heads_log_path(heads).exists()

