"""The package layout: one `refsav` namespace, and imports that follow the dependency rule.

- `refsav.schemas` imports nothing of ours;
- `refsav.runtime` imports only `refsav.schemas`;
- `refsav.pipelines`, `refsav.benchmark` and `refsav.model` import only `refsav.schemas`,
  `refsav.runtime` and themselves, never each other;
- only the application layer (`refsav/*.py`) wires several packages together.

Every import is read from the source with `ast`, including those inside functions and
relative ones, and strings handed to `importlib.import_module`.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# folder -> the module name it has inside the installed package
FOLDERS = {
    "schemas": "refsav.schemas",
    "pipelines": "refsav.pipelines",
    "benchmark": "refsav.benchmark",
    "model": "refsav.model",
    "refsav/runtime": "refsav.runtime",
    "refsav": "refsav",
}
ALLOWED = {
    "refsav.schemas": {"refsav.schemas"},
    "refsav.runtime": {"refsav.runtime", "refsav.schemas"},
    "refsav.pipelines": {"refsav.pipelines", "refsav.runtime", "refsav.schemas"},
    "refsav.benchmark": {"refsav.benchmark", "refsav.runtime", "refsav.schemas"},
    "refsav.model": {"refsav.model", "refsav.runtime", "refsav.schemas"},
}
OLD_NAMES = {"schemas", "pipelines", "benchmark", "model"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    for folder, package in sorted(FOLDERS.items(), key=lambda kv: -len(kv[0])):
        if rel.parts[: len(Path(folder).parts)] == Path(folder).parts:
            rest = rel.parts[len(Path(folder).parts):]
            parts = [package, *rest]
            parts[-1] = parts[-1].removesuffix(".py")
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join(parts)
    raise AssertionError(f"{rel} is in no package")


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                # `from . import x` may name submodules
                found += [(node.lineno, target)] + ([(node.lineno, f"{target}.{a.name}") for a in node.names]
                                                    if not node.module else [])
            else:
                found.append((node.lineno, node.module or ""))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return found


def owner(module: str) -> str | None:
    """The layer a refsav module belongs to; None for third-party modules."""
    parts = module.split(".")
    if parts[0] != "refsav":
        return None
    if len(parts) == 1:
        return "refsav"
    if parts[1] in ("schemas", "runtime", "pipelines", "benchmark", "model"):
        return f"refsav.{parts[1]}"
    return "refsav"  # the application layer: refsav.cli, refsav.demo, refsav.evaluate ...


def source_files() -> list[Path]:
    files = []
    for folder in ("schemas", "pipelines", "benchmark", "model", "refsav"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


def test_every_import_follows_the_dependency_rule():
    broken = []
    for path in source_files():
        layer = owner(module_name(path))
        for line, module in imports_of(path):
            if module.split(".")[0] in OLD_NAMES:
                broken.append(f"{path.relative_to(ROOT)}:{line} imports the old top-level name {module}")
                continue
            target = owner(module)
            if target is None or layer == "refsav":
                continue
            if target not in ALLOWED[layer]:
                broken.append(f"{path.relative_to(ROOT)}:{line} ({layer}) imports {module}")
    assert not broken, "\n".join(broken)


def test_the_rule_checker_sees_imports_inside_functions_and_relative_ones(tmp_path, monkeypatch):
    # A checker that missed these would pass vacuously.
    src = ROOT / "pipelines" / "annotate" / "run.py"
    found = dict((m, line) for line, m in imports_of(src))
    assert "refsav.runtime.executor" in found
    assert any(m.startswith("refsav.pipelines.") for m in found)  # from .x import (relative)
    probe = ROOT / "model" / "_layout_probe.py"
    probe.write_text("def f():\n    from ..benchmark import score\n    import importlib\n"
                     "    importlib.import_module('refsav.pipelines.sample')\n")
    try:
        mods = [m for _, m in imports_of(probe)]
    finally:
        probe.unlink()
    assert "refsav.benchmark" in mods and "refsav.pipelines.sample" in mods


def test_app_layer_is_where_packages_meet():
    # The application layer exists and is what joins model and benchmark.
    mods = {m for _, m in imports_of(ROOT / "refsav" / "evaluate.py")}
    assert any(m.startswith("refsav.model") for m in mods) and any(m.startswith("refsav.benchmark") for m in mods)


def _env(pythonpath: str) -> dict[str, str]:
    sandbox = ROOT.parent / "shared" / "sandbox"
    parts = [pythonpath] + ([str(sandbox)] if (sandbox / "sitecustomize.py").exists() else [])
    return dict(os.environ, PYTHONPATH=os.pathsep.join(parts), HF_HUB_OFFLINE="1")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the tracked files (a clean checkout), as `pip wheel .` does."""
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes((ROOT / rel).read_bytes())
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (found,) = out.glob("refsav-*.whl")
    return found


@pytest.mark.timeout(300)
def test_wheel_has_one_top_level_package(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert z.read(top_level).decode().split() == ["refsav"]
        entry_points = z.read(top_level.replace("top_level.txt", "entry_points.txt")).decode()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"refsav"}
    for module in ("refsav/schemas/rle.py", "refsav/benchmark/score.py", "refsav/model/sa2va.py",
                   "refsav/pipelines/annotate/run.py", "refsav/runtime/executor.py", "refsav/cli.py"):
        assert module in names
    assert any(n.startswith("refsav/pipelines/annotate/prompts/") and n.endswith(".txt") for n in names)
    assert "refsav = refsav.cli:main" in entry_points


@pytest.mark.timeout(300)
def test_installed_wheel_samples_and_scores(wheel, tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = _env(str(site))
    run = tmp_path / "run"
    run.mkdir()

    def refsav(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "refsav", *args], cwd=run, env=env, capture_output=True,
                              text=True, timeout=240)

    where = subprocess.run([sys.executable, "-c", "import refsav.schemas, refsav.benchmark; "
                            "print(refsav.schemas.__file__); print(refsav.benchmark.__file__)"],
                           cwd=run, env=env, capture_output=True, text=True)
    assert all(line.startswith(str(site)) for line in where.stdout.split()), where.stdout + where.stderr
    proc = refsav("sample", "--out", "sample", "--videos", "1", "--frames", "8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    gt = run / "sample" / "ref_sav_eval"
    assert (gt / "meta_expressions_valid.json").exists()
    baseline = subprocess.run(
        [sys.executable, "-c", "import sys; from refsav.benchmark.baselines import write_baseline; "
         "from refsav.benchmark.inputs import RefVosGroundTruth; "
         "write_baseline(RefVosGroundTruth.load(sys.argv[1]), sys.argv[2], 'perfect')", str(gt), "pred.json"],
        cwd=run, env=env, capture_output=True, text=True)
    assert baseline.returncode == 0, baseline.stderr[-2000:]
    proc = refsav("score", "--protocol", "refsav", "--gt", str(gt), "--pred", "pred.json", "--out", "scores")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"J&F": 100.0' in (run / "scores" / "scores.json").read_text()


@pytest.mark.timeout(300)
def test_user_modules_named_like_our_folders_do_not_shadow_refsav(tmp_path):
    """A user's own model.py, benchmark/, schemas.py and pipelines/ in the working directory,
    with PYTHONPATH=., must not break refsav."""
    for name in ("model.py", "schemas.py"):
        (tmp_path / name).write_text(f"raise ImportError('the user\\'s {name} was imported')\n")
    for name in ("benchmark", "pipelines"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('the user\\'s {name}/ was imported')\n")
    env = _env(".")
    cli = Path(sys.executable).with_name("refsav")
    refsav_cmd = [str(cli)] if cli.exists() else [sys.executable, "-m", "refsav"]

    def run(cmd: list[str]) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, f"{cmd}: {proc.stderr[-2000:]}"
        return proc

    run([sys.executable, "-c", "from refsav.model import load_sa2va; assert callable(load_sa2va)"])
    assert "Scoring" in run([sys.executable, "-m", "refsav", "--help"]).stdout
    run(refsav_cmd + ["model", "init-random", "--size", "tiny", "--out", "ckpt"])
    assert (tmp_path / "ckpt" / "config.json").exists()
    run(refsav_cmd + ["sample", "--out", "sample", "--videos", "1", "--frames", "8"])
    gt = tmp_path / "sample" / "ref_sav_eval"
    run([sys.executable, "-c", "import sys; from refsav.benchmark.baselines import write_baseline; "
         "from refsav.benchmark.inputs import RefVosGroundTruth; "
         "write_baseline(RefVosGroundTruth.load(sys.argv[1]), sys.argv[2], 'perfect')", str(gt), "pred.json"])
    run(refsav_cmd + ["score", "--protocol", "refsav", "--gt", str(gt), "--pred", "pred.json", "--out", "scores"])
    assert '"J&F": 100.0' in (tmp_path / "scores" / "scores.json").read_text()


def _package_sources() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text() for p in source_files()}


def test_one_mp4_decoder():
    # Reading mp4 frames goes through refsav.schemas.media alone; the synthetic generator
    # only writes (av.open(..., mode="w")).
    readers = {name for name, text in _package_sources().items()
               if any(k in text for k in ("av.open(", "decord", "VideoCapture(", "VideoReader("))}
    assert readers == {"schemas/media.py", "pipelines/synthetic.py"}
    assert all('mode="w"' in line for line in _package_sources()["pipelines/synthetic.py"].splitlines()
               if "av.open(" in line)


def test_one_coco_counts_decoder():
    # pycocotools (which parses counts strings) is called from refsav.schemas.rle alone;
    # schemas/refer.py only rasterises refer polygons with it. No module but rle.py walks the
    # characters of a counts string.
    users = {str(p.relative_to(ROOT)) for p in source_files()
             if any(m.split(".")[0] == "pycocotools" for _, m in imports_of(p))}
    assert users == {"schemas/rle.py", "schemas/refer.py"}
    refer = _package_sources()["schemas/refer.py"]
    assert "frPyObjects(polys" in refer and "toBbox" not in refer and ".area(" not in refer
    parsers = {name for name, text in _package_sources().items() if "ord(" in text and "counts" in text}
    assert parsers <= {"schemas/rle.py"}
