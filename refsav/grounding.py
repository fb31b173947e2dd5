"""The grounding stage's model and scorer: where `refsav annotate --grounder` meets
refsav.model and refsav.benchmark.

`refsav.pipelines.annotate.grounding` sees only interfaces; this module supplies them:

- `Sa2VASpec` (`--grounder sa2va:CKPT`): the checkpoint loaded once in each worker process,
  on that worker's device, called one request at a time (the model is not thread-safe);
- `ServeSpec` (`--grounder http://host:port/v1`): a `refsav serve` endpoint, through
  refsav.model.serve_client, so that CPU workers annotate while a GPU node grounds;
- `benchmark_scorer`: the benchmark's own J and F (`refsav.benchmark.metrics.frame_scores`
  on run-length masks, what `refsav score` uses), averaged over the frames.

The specs are small frozen dataclasses: a Dask worker unpickles them, which imports this
module there, and builds its grounder from them.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from refsav.pipelines.annotate.cli import GrounderArgs, annotate_command, set_grounder_resolver
from refsav.pipelines.annotate.grounding import GrounderError, GroundingRequest, GroundingSettings, MaskScore
from refsav.schemas import rle as rle_ops
from refsav.schemas.errors import RefsavError
from refsav.schemas.rle import Rle

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


# ----------------------------------------------------------------------------- scorer


def benchmark_scorer(pred: Sequence[Rle], gt: Sequence[Rle]) -> MaskScore:
    """J and F of a predicted masklet against a ground-truth one, each the mean over the
    frames of the benchmark's per-frame values (`frame_scores`, as `score_video` takes them)."""
    from refsav.benchmark.metrics import RunMasks, frame_scores

    if len(pred) != len(gt):
        raise ValueError(f"{len(pred)} predicted frames against {len(gt)} ground-truth frames")
    if not gt:
        return MaskScore(1.0, 1.0)
    h, w = gt[0].size
    s = frame_scores(RunMasks.from_rles(pred, h, w), RunMasks.from_rles(gt, h, w))
    return MaskScore(float(np.mean(s.j)), float(np.mean(s.f)))


# ----------------------------------------------------------------------------- model options


def _options(inference: str, force_answer: str | None) -> dict[str, Any]:
    """What the model is asked with: Sa2VA's evaluation defaults for the mode, plus a forced answer."""
    from refsav.model.config import DEFAULT_NUM_KEY_FRAMES, PredictOptions

    opts = PredictOptions(inference=inference, num_key_frames=DEFAULT_NUM_KEY_FRAMES[inference])
    return {"key_frames": opts.key_frames, "num_key_frames": opts.num_key_frames, "sam2_norm": opts.sam2_norm,
            "inference": opts.inference, "max_new_tokens": opts.max_new_tokens, "answer": force_answer}


def _predict_options(options: dict[str, Any]):
    from refsav.model.config import PredictOptions

    return PredictOptions(key_frames=options["key_frames"], num_key_frames=options["num_key_frames"],
                          sam2_norm=options["sam2_norm"], inference=options["inference"],
                          max_new_tokens=options["max_new_tokens"])


def _first_masklet(masks: Sequence[np.ndarray], n: int, size: tuple[int, int]) -> list[Rle]:
    """Sa2VA's ref-VOS rule: the first [SEG]'s masklet; no [SEG] = empty masks."""
    if masks:
        return [rle_ops.encode(m) for m in masks[0]]
    empty = rle_ops.empty(*size)
    return [empty] * n


def weights_sha256(folder: Path) -> str:
    """The checkpoint's weights: the sha256 of its one weights file, or of the `sha256  name`
    lines (sorted by name) of several."""
    from refsav.schemas.io import sha256_file

    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise RefsavError("no weights file (*.safetensors, *.bin) in the checkpoint folder", file=folder)
    if len(files) == 1:
        return sha256_file(files[0])
    manifest = "".join(f"{sha256_file(p)}  {p.name}\n" for p in files)
    return hashlib.sha256(manifest.encode()).hexdigest()


# ----------------------------------------------------------------------------- in-process Sa2VA


class _InProcess:
    """A loaded Sa2VA; `segment` runs one request at a time."""

    concurrency = 1

    def __init__(self, spec: "Sa2VASpec") -> None:
        import torch

        from refsav.model.checkpoint import load_sa2va

        folder = Path(spec.path)
        if weights_sha256(folder) != spec.sha256:
            raise RefsavError("the grounder checkpoint changed since the run started (weights sha256 differs)",
                              file=folder)
        dtype = getattr(torch, spec.dtype)
        try:
            self.model = load_sa2va(folder, dtype=dtype, device=spec.device)
        except RefsavError:
            raise
        except Exception as err:  # noqa: BLE001 - no such device, out of memory: one line, the shard fails
            raise RefsavError(f"cannot load the grounder on {spec.device}: {type(err).__name__}: {err}",
                              file=folder) from None
        self.options = _predict_options(spec.options())
        self.answer = spec.force_answer
        self.lock = threading.Lock()

    def segment(self, request: GroundingRequest) -> list[list[Rle]]:
        from refsav.model.predict import prompt_for

        frames = list(request.images)
        size = tuple(request.images.shape[1:3])
        prompts = [prompt_for(t) for t in request.texts]
        answers = None if self.answer is None else [self.answer] * len(prompts)
        with self.lock:
            preds = self.model.predict_batch(prompts, video=frames, options=self.options, answers=answers)
        return [_first_masklet(p.masks, len(frames), size) for p in preds]


@dataclass(frozen=True)
class Sa2VASpec:
    """`--grounder sa2va:CKPT`: the checkpoint in each worker process."""

    path: str  # absolute
    sha256: str  # of the weights (weights_sha256), checked again where it is loaded
    device: str
    inference: str = "official"
    force_answer: str | None = None

    @property
    def needs_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def identity(self) -> tuple[str, str, str, str]:
        return self.path, self.sha256, "in-process", self.inference

    def options(self) -> dict[str, Any]:
        return _options(self.inference, self.force_answer)

    @property
    def dtype(self) -> str:
        # float32 on a CPU; bfloat16, Sa2VA's own precision, on a GPU.
        return "float32" if self.device == "cpu" else "bfloat16"

    def fingerprint(self) -> dict[str, Any]:
        # The dtype changes the masks: a rerun on another kind of device is another plan.
        return {"weights_sha256": self.sha256, "dtype": self.dtype}

    def check(self) -> None:
        if not (Path(self.path) / "config.json").is_file():
            raise RefsavError("not a Sa2VA checkpoint folder (no config.json)", file=self.path)

    def build(self) -> _InProcess:
        return _InProcess(self)


# ----------------------------------------------------------------------------- refsav serve


class _Remote:
    """A `refsav serve` endpoint; each call sends one object's frames once per expression
    (PNG data URLs, encoded once per call), and several objects may be in flight."""

    def __init__(self, spec: "ServeSpec") -> None:
        self.spec = spec
        self.concurrency = spec.max_in_flight
        self.options = _predict_options(spec.options())

    def segment(self, request: GroundingRequest) -> list[list[Rle]]:
        from refsav.model.predict import prompt_for
        from refsav.model.serve_client import RemoteSa2VA

        # A client per call: RemoteSa2VA remembers the last frames it encoded, which
        # threads must not share.
        client = RemoteSa2VA(self.spec.url, self.spec.model, self.spec.api_key, timeout=self.spec.timeout)
        frames = list(request.images)
        size = tuple(request.images.shape[1:3])
        out = []
        for text in request.texts:
            try:
                pred = client.predict(prompt_for(text), video=frames, options=self.options, answer=self.spec.force_answer)
            except RefsavError as err:
                raise GrounderError(str(err)) from None
            out.append(_first_masklet(pred.masks, len(frames), size))
        return out


@dataclass(frozen=True)
class ServeSpec:
    """`--grounder http://host:port/v1`: a `refsav serve` endpoint."""

    url: str  # as given (it may carry credentials: provenance gets it without them)
    model: str  # the served model's id
    inference: str = "official"
    force_answer: str | None = None
    dtype: str = "unknown"  # the served model's, as the server reports it
    api_key: str | None = None  # never recorded
    max_in_flight: int = 2
    timeout: float = 600.0
    needs_gpu: bool = False  # the server's GPU, not the worker's

    def identity(self) -> tuple[str, str, str, str]:
        return self.model, "", _strip_credentials(self.url), self.inference

    def options(self) -> dict[str, Any]:
        return _options(self.inference, self.force_answer)

    def fingerprint(self) -> dict[str, Any]:
        return {"served_model": self.model, "dtype": self.dtype}

    def check(self) -> None:
        from refsav.model.serve_client import served_model

        served_model(self.url, self.model, self.api_key, timeout=min(self.timeout, 10.0))

    def build(self) -> _Remote:
        return _Remote(self)


# ----------------------------------------------------------------------------- --grounder


def _strip_credentials(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts._replace(query="", fragment="")).rstrip("/")


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve(args: GrounderArgs) -> GroundingSettings:
    """`--grounder` and its options → the pipeline's GroundingSettings."""
    from refsav.model.config import INFERENCE_MODES

    if args.inference not in INFERENCE_MODES:
        raise RefsavError(f"--grounder-inference must be one of {', '.join(INFERENCE_MODES)}, got {args.inference!r}")
    value = args.grounder.strip()
    if value.startswith("sa2va:"):
        folder = Path(value[len("sa2va:"):]).expanduser().resolve()
        if not folder.is_dir():
            raise RefsavError("grounder checkpoint folder not found", file=folder)
        spec: Any = Sa2VASpec(str(folder), weights_sha256(folder), args.device or _default_device(), args.inference,
                              args.force_answer)
        spec.check()
    elif value.startswith(("http://", "https://")):
        from refsav.model.serve_client import served_model

        if args.device is not None:
            raise RefsavError("--grounder-device is the server's: start refsav serve with --device")
        url = value.rstrip("/")
        api_key = args.api_key
        # The served model's id is part of the plan: ask now, before OUT is touched.
        card = served_model(value, None, api_key, timeout=min(args.timeout, 10.0))
        spec = ServeSpec(url, card.id, args.inference, args.force_answer, card.dtype, api_key, args.max_in_flight,
                         args.timeout)
    else:
        raise RefsavError(f"--grounder must be sa2va:CKPT or an http(s):// URL of refsav serve, got {value!r}")
    return GroundingSettings(spec, benchmark_scorer, args.min_grounding, args.ambiguity_margin, args.margin)


set_grounder_resolver(resolve)

__all__ = ["Sa2VASpec", "ServeSpec", "annotate_command", "benchmark_scorer", "resolve", "weights_sha256"]
