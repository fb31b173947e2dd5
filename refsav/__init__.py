"""refsav: build referring video datasets, score referring segmentation, run Sa2VA.

The feature packages live under this one namespace:

- `refsav.schemas`: the data contracts (records, file formats, errors); imports nothing of ours;
- `refsav.pipelines`: dataset building (synthetic SA-V, VLM annotation, publishing, exports);
- `refsav.benchmark`: scoring with the official protocols, leaderboards;
- `refsav.model`: the Sa2VA / DeSa2VA reference models;
- `refsav.runtime`: where work runs (executors) and how it reports progress.

`pipelines`, `benchmark` and `model` import only `refsav.schemas` and `refsav.runtime`; this
application layer (`refsav.cli`, `refsav.demo`, `refsav.evaluate`) is what wires them together.
"""
from refsav.schemas.version import __version__

__all__ = ["__version__"]
