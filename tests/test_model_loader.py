"""Hostile and broken checkpoint folders: the loader refuses each with one line naming
the file and the tensor, and never executes a pickle.

Every folder here is the tiny random Sa2VA of tests/test_model.py with one thing
changed: a shard index that points elsewhere, pickle weights, a tensor of the wrong
dtype, non-finite values, an unreadable file.
"""
from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file
import test_model
from refsav.model.checkpoint import CheckpointError, WeightSource, load_sa2va, save_released
from refsav.schemas.errors import SchemaError

# Fixtures shared with tests/test_model.py: one torch thread, the tiny InternVL Sa2VA folder.
one_thread = test_model.one_thread
tiny_dir = test_model.tiny_dir

INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def tensors(tiny_dir):
    return load_file(str(tiny_dir / "model.safetensors"))


def _folder(tiny_dir, dst, *, weights=True):
    """The tiny checkpoint's config and tokenizer files, and its weights if asked."""
    ignore = None if weights else shutil.ignore_patterns("*.safetensors")
    shutil.copytree(tiny_dir, dst, ignore=ignore)
    return dst


def _index(folder, weight_map):
    (folder / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


class _Payload:
    """Unpickling this opens (creates) `marker` for writing: proof that a pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _pickle_bomb(path, tensors, marker):
    """A torch.save file with every real tensor plus one object whose unpickling
    creates `marker`: with weights_only=False it would load and run."""
    torch.save({**tensors, "payload": _Payload(marker)}, path)
    return path


# ----------------------------------------------------------------------------- the shard index


@pytest.mark.parametrize("name", [
    "../outside/model.safetensors",
    "sub/../../outside/model.safetensors",
    "..\\outside\\model.safetensors",
    "/ABS/model.safetensors",
    "../../../../../../etc/passwd",
])
def test_index_cannot_point_outside_the_folder(tiny_dir, tensors, tmp_path, name):
    # A complete, valid weight file sits where the index points: only the rule stops it.
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(tiny_dir / "model.safetensors", outside / "model.safetensors")
    folder = _folder(tiny_dir, tmp_path / "ckpt", weights=False)
    name = name.replace("/ABS", str(outside))
    _index(folder, {k: name for k in tensors})
    with pytest.raises(CheckpointError) as err:
        WeightSource(folder)
    msg = str(err.value)
    assert "outside the checkpoint folder" in msg and INDEX in msg and "\n" not in msg


def test_index_entries_inside_the_folder_still_load(tiny_dir, tensors, tmp_path):
    folder = _folder(tiny_dir, tmp_path / "ckpt", weights=False)
    (folder / "shards").mkdir()
    keys = sorted(tensors)
    save_file({k: tensors[k] for k in keys[:100]}, str(folder / "shards" / "a.safetensors"))
    save_file({k: tensors[k] for k in keys[100:]}, str(folder / "b.safetensors"))
    _index(folder, {k: ("shards/a.safetensors" if i < 100 else "./b.safetensors") for i, k in enumerate(keys)})
    source = WeightSource(folder)
    assert set(source.index) == set(tensors)
    assert source.index[keys[0]].file == folder / "shards" / "a.safetensors"


@pytest.mark.parametrize("index, match", [
    ({"weight_map": {}}, "missing or empty"),
    ({"weight_map": ["model.safetensors"]}, "missing or empty"),
    (["not", "an", "object"], "missing or empty"),
    ({"weight_map": {"a": 7}}, "not a file name"),
    ({"weight_map": {"a": "config.json"}}, "not a weight file"),
    ({"weight_map": {"a": "gone.safetensors"}}, "listed in the index but missing"),
])
def test_bad_index_contents_are_one_line_errors(tiny_dir, tmp_path, index, match):
    folder = _folder(tiny_dir, tmp_path / "ckpt", weights=False)
    (folder / INDEX).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=match) as err:
        WeightSource(folder)
    assert "\n" not in str(err.value)


def test_unparsable_index_is_a_one_line_error(tiny_dir, tmp_path):
    folder = _folder(tiny_dir, tmp_path / "ckpt", weights=False)
    (folder / INDEX).write_text('{"weight_map": ' + "[" * 100_000)
    with pytest.raises(SchemaError) as err:
        WeightSource(folder)
    assert INDEX in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- pickles never run


def test_no_pickle_is_ever_executed(tiny_dir, tensors, tmp_path):
    marker = tmp_path / "PWNED"
    # 1. The index lists a .bin next to safetensors: refused before it is opened.
    listed = _folder(tiny_dir, tmp_path / "listed", weights=False)
    _pickle_bomb(listed / "pytorch_model.bin", tensors, marker)
    _index(listed, {k: "pytorch_model.bin" for k in tensors})
    with pytest.raises(CheckpointError, match="the index lists pickle weight files.*--allow-pickle") as err:
        load_sa2va(listed)
    assert INDEX in str(err.value)
    # 2. Only pickle files in the folder: refused too.
    only = _folder(tiny_dir, tmp_path / "only", weights=False)
    _pickle_bomb(only / "pytorch_model.bin", tensors, marker)
    with pytest.raises(CheckpointError, match="only pickle weight files"):
        load_sa2va(only)
    # 3. Opted in: torch.load(weights_only=True) refuses the object, as a one-line error.
    for folder in (listed, only):
        with pytest.warns(UserWarning, match="pickle"), pytest.raises(CheckpointError) as err:
            load_sa2va(folder, allow_pickle=True)
        msg = str(err.value)
        assert "pickle file refused or unreadable" in msg and "pytorch_model.bin" in msg and "\n" not in msg
    assert not marker.exists()
    # The payload is live: an unrestricted load runs it. This is what the loader prevented.
    torch.load(only / "pytorch_model.bin", weights_only=False)
    assert marker.exists()


def test_opted_in_plain_pickle_loads(tiny_dir, tensors, tmp_path):
    folder = _folder(tiny_dir, tmp_path / "ckpt", weights=False)
    keys = sorted(tensors)
    torch.save({k: tensors[k] for k in keys[:50]}, folder / "part1.bin")
    save_file({k: tensors[k] for k in keys[50:]}, str(folder / "part2.safetensors"))
    _index(folder, {k: ("part1.bin" if i < 50 else "part2.safetensors") for i, k in enumerate(keys)})
    with pytest.warns(UserWarning, match="allow_pickle=True"):
        source = WeightSource(folder, allow_pickle=True)
    assert set(source.index) == set(tensors)
    assert source.index[keys[0]].dtype == "float32" and source.index[keys[-1]].dtype == "F32"


def test_pickle_of_something_else_is_refused(tiny_dir, tmp_path):
    folder = _folder(tiny_dir, tmp_path / "ckpt", weights=False)
    torch.save([torch.zeros(2)], folder / "pytorch_model.bin")
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        WeightSource(folder, allow_pickle=True)


# ----------------------------------------------------------------------------- tensor values


def test_integer_tensor_is_refused_by_name(tiny_dir, tensors, tmp_path):
    bad = dict(tensors)
    bad["text_hidden_fcs.2.weight"] = torch.ones_like(tensors["text_hidden_fcs.2.weight"], dtype=torch.int8)
    folder = _folder(tiny_dir, tmp_path / "ckpt", weights=False)
    save_file(bad, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_sa2va(folder)
    msg = str(err.value)
    assert "1 not floating point (text_hidden_fcs.2.weight: I8)" in msg and "\n" not in msg
    # The same tensor in an opted-in pickle file: the torch dtype is named.
    pickled = _folder(tiny_dir, tmp_path / "pickled", weights=False)
    torch.save(bad, pickled / "pytorch_model.bin")
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match=r"text_hidden_fcs\.2\.weight: int8"):
        load_sa2va(pickled, allow_pickle=True)


def test_non_finite_values_are_reported(tiny_dir, tensors, tmp_path):
    bad = dict(tensors)
    w = tensors["text_hidden_fcs.0.weight"].clone()
    w[0, :2] = float("nan")
    w[3, 4] = float("-inf")
    bad["text_hidden_fcs.0.weight"] = w
    emb = tensors["language_model.model.embed_tokens.weight"].clone()
    emb[5, 5] = float("inf")
    bad["language_model.model.embed_tokens.weight"] = emb.to(torch.bfloat16)  # any float dtype is checked
    folder = _folder(tiny_dir, tmp_path / "ckpt", weights=False)
    save_file(bad, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_sa2va(folder)
    msg = str(err.value)
    assert "2 with non-finite values" in msg and "\n" not in msg
    assert "text_hidden_fcs.0.weight: 2 NaN, 1 inf" in msg
    assert "language_model.model.embed_tokens.weight: 0 NaN, 1 inf" in msg
    with pytest.warns(UserWarning, match="non-finite weights loaded"):
        loaded = load_sa2va(folder, strict=False)
    assert loaded.load_report.nonfinite == (("language_model.model.embed_tokens.weight", 0, 1),
                                            ("text_hidden_fcs.0.weight", 2, 1))
    assert not loaded.load_report.ok


def test_truncated_safetensors_is_a_one_line_error(tiny_dir, tmp_path):
    folder = _folder(tiny_dir, tmp_path / "ckpt")
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable safetensors file") as err:
        WeightSource(folder)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- files written


def test_written_checkpoints_get_the_mode_of_any_new_file(tiny_dir, tmp_path):
    from refsav.schemas.io import atomic_path

    probe = tmp_path / "probe"
    with atomic_path(probe) as tmp:
        tmp.write_text("x")
    expected = stat.S_IMODE(probe.stat().st_mode)  # 0o666 under the umask, e.g. 0o644
    assert expected == 0o666 & ~_umask()
    from refsav.model.desa2va import DeSa2VA, save_heads

    sa2va = load_sa2va(tiny_dir)
    out = save_released(sa2va, tmp_path / "saved", max_shard_bytes=60 * 1024**2)
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) > 1  # sharded: every shard and the index are checked
    heads = save_heads(tmp_path / "heads.safetensors", DeSa2VA.from_sa2va(sa2va, seed=0).heads)
    for f in shards + [out / INDEX, out / "config.json", heads]:
        assert stat.S_IMODE(f.stat().st_mode) == expected, (f.name, oct(f.stat().st_mode))


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


# ----------------------------------------------------------------------------- `refsav predict` with a bad --model


@pytest.fixture(scope="module")
def gt(tmp_path_factory):
    from refsav.pipelines.sample import EVAL, SampleConfig, write_sample

    root = tmp_path_factory.mktemp("sample")
    write_sample(root, SampleConfig(videos=1, width=48, height=32, frames=3, objects=1), show_progress=False)
    return root / EVAL


def _predict(model, gt, out, *extra):
    import refsav.cli as root_cli

    args = ["predict", "--model", model, "--protocol", "refsav", "--gt", gt, "--out", out, "--dtype", "fp32",
            "--force-answer", "Sure, [SEG].", "--num-key-frames", "1", *extra]
    return root_cli.main([str(a) for a in args])


def test_a_failed_start_leaves_nothing_behind(tiny_dir, tensors, gt, tmp_path, capsys):
    pickled = _folder(tiny_dir, tmp_path / "pickled", weights=False)
    torch.save(tensors, pickled / "pytorch_model.bin")
    out = tmp_path / "out"
    assert _predict(pickled, gt, out) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # the rest is the progress bar
    assert len(errors) == 1 and "--allow-pickle" in errors[0] and "Traceback" not in err
    assert not out.exists()  # run.json gone, and the folders the run made

    # An OUT the user made stays, empty; an unreadable first frame fails the same way.
    out.mkdir()
    broken = tmp_path / "broken_gt"
    shutil.copytree(gt, broken)
    first = sorted(p for p in (broken / "videos").rglob("*") if p.is_file())[0]
    first.write_bytes(b"not an image")
    assert _predict(tiny_dir, broken, out) == 2
    assert "unreadable image" in capsys.readouterr().err
    assert out.is_dir() and list(out.iterdir()) == []

    # The corrected reruns (another --model, another --gt) are not refused.
    assert _predict(tiny_dir, gt, out) == 0
    assert json.loads((out / "run.json").read_text())["model"] == str(tiny_dir.resolve())
    assert (out / "results.json").exists()
    capsys.readouterr()
    # --allow-pickle reaches the loader; it is how weights are read, not a setting of the
    # predictions, so the same weights as pickle give the same results and may share OUT.
    again = tmp_path / "again"
    with pytest.warns(UserWarning, match="allow_pickle=True"):
        assert _predict(pickled, gt, again, "--allow-pickle") == 0
    assert "allow_pickle" not in json.loads((again / "run.json").read_text())
    assert (again / "results.json").read_bytes() == (out / "results.json").read_bytes()


def test_a_failure_after_the_first_part_keeps_run_json(tiny_dir, gt, tmp_path, monkeypatch, capsys):
    import refsav.model.predict as mp

    out = tmp_path / "out"
    assert _predict(tiny_dir, gt, out) == 0
    (out / "results.json").unlink()
    parts = sorted((out / "parts").iterdir())
    # A later failure (here: while collecting results) must not drop the settings that made the parts.
    monkeypatch.setattr(mp, "_part_is_complete", lambda *a: False)
    monkeypatch.setattr(mp, "predict_video", lambda task: (_ for _ in ()).throw(mp.SchemaError("boom")))
    assert _predict(tiny_dir, gt, out) == 2
    assert "boom" in capsys.readouterr().err
    assert (out / "run.json").exists() and sorted((out / "parts").iterdir()) == parts


# ----------------------------------------------------------------------------- hostile config.json


def _with_config(tiny_dir, dst, change):
    folder = _folder(tiny_dir, dst)
    raw = json.loads((folder / "config.json").read_text())
    change(raw)
    (folder / "config.json").write_text(json.dumps(raw))
    return folder


def test_sam2_config_cannot_name_a_yaml_outside_the_package(tiny_dir, tmp_path):
    """refsav.sam2.config goes to hydra's `instantiate`, which calls any `_target_`:
    a config.json pointing it at its own YAML would run code."""
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.yaml"
    # Nested, as a SAM-2 model config nests its parts: `instantiate(cfg.model, _recursive_=True)`
    # builds image_encoder first, whatever the loader puts at model._target_.
    evil.write_text(f"model:\n  _target_: builtins.dict\n  image_encoder:\n    _target_: builtins.open\n"
                    f"    file: {marker}\n    mode: w\n")
    escapes = [f"configs/sam2/{'../' * 12}{str(evil).lstrip('/')}", str(evil), "configs/sam2/../../evil.yaml",
               "configs/sam2/evil.yml", "sam2_hiera_t.yaml"]
    for name in escapes:
        def change(raw):
            raw["refsav"]["sam2"]["config"] = name
        folder = _with_config(tiny_dir, tmp_path / f"ckpt{escapes.index(name)}", change)
        with pytest.raises(SchemaError, match="not one of the sam2 package's configs") as err:
            load_sa2va(folder)
        assert "config.json" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
    # The YAML is live: instantiating it as the loader would have creates the marker.
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    instantiate(OmegaConf.load(str(evil)).model, _recursive_=True)["image_encoder"].close()
    assert marker.exists()


@pytest.mark.parametrize("change, match", [
    (lambda raw: raw["refsav"]["sam2"].__setitem__("image_size", 10**6), "multiple of 32 from 64 to 4096"),
    (lambda raw: raw["refsav"]["sam2"].__setitem__("image_size", 100), "multiple of 32 from 64 to 4096"),
    (lambda raw: raw["llm_config"].__setitem__("vocab_size", 10**13), "cannot build the model.*allocate"),
    (lambda raw: raw["llm_config"].__setitem__("hidden_size", "wide"), "cannot build the model.*hidden_size"),
    (lambda raw: raw["llm_config"].__setitem__("num_attention_heads", 0), "cannot build the model.*ZeroDivision"),
    # Refused before anything is built: a million layers would take many minutes to construct.
    (lambda raw: raw["llm_config"].__setitem__("num_hidden_layers", 10**6), "asks for 1000000 LLM layers.*hold 2"),
    (lambda raw: raw["vision_config"].__setitem__("num_hidden_layers", 10**6), "asks for 1000000 vision layers"),
    (lambda raw: raw["llm_config"].__setitem__("num_hidden_layers", "2"), "'2' is not a positive integer"),
])
def test_hostile_sizes_in_config_are_one_line_errors(tiny_dir, tmp_path, change, match):
    folder = _with_config(tiny_dir, tmp_path / "ckpt", change)
    with pytest.raises(SchemaError, match=match) as err:
        load_sa2va(folder)
    assert "config.json" in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- DeSa2VA heads files


@pytest.fixture(scope="module")
def heads_file(tiny_dir, tmp_path_factory):
    from refsav.model.desa2va import DeSa2VA, save_heads

    path = tmp_path_factory.mktemp("heads") / "heads.safetensors"
    return save_heads(path, DeSa2VA.from_sa2va(load_sa2va(tiny_dir), seed=0).heads)


def _rewrite_heads(src, dst, *, tensors=None, config=None):
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as fh:
        meta = fh.metadata()
    original = load_file(str(src))
    if config is not None:
        meta = {**meta, "config": config(json.loads(meta["config"]))}
    save_file(tensors(original) if tensors else original, str(dst), metadata=meta)
    return dst


def _set(d, **kw):
    return {**d, **kw}


@pytest.mark.parametrize("tensors, config, match", [
    (None, lambda c: json.dumps(_set(c, hidden_size=10**7)), r"weights do not fit the config.*\[10000000"),
    (None, lambda c: json.dumps(_set(c, num_points=10**6)), r"points\.bias is \[8\] in the file, \[2000000\]"),
    (None, lambda c: "[" * 100_000, "metadata|nesting|deep"),
    (None, lambda c: json.dumps(_set(c, hidden_size=0)), "must be positive"),
    (lambda t: _set(t, **{"gate.weight": t["gate.weight"].to(torch.int8)}), None, "gate.weight is int8"),
    (lambda t: _set(t, **{"text.0.bias": torch.full_like(t["text.0.bias"], float("nan"))}), None,
     r"text\.0\.bias holds 64 NaN"),
])
def test_bad_heads_files_are_one_line_errors(heads_file, tmp_path, tensors, config, match):
    from refsav.model.desa2va import load_heads

    bad = _rewrite_heads(heads_file, tmp_path / "bad.safetensors", tensors=tensors, config=config)
    with pytest.raises(SchemaError, match=match) as err:
        load_heads(bad)
    assert "bad.safetensors" in str(err.value) and "\n" not in str(err.value)
    assert load_heads(heads_file).config.hidden_size == 64  # the untouched file still loads
