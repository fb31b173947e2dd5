"""refsav.pipelines: building referring datasets.

The synthetic SA-V generator (`sample`, `synthetic`), the VLM annotation pipeline
(`annotate`, its stages and `vlm` backends), and what turns a run into a dataset (`publish`,
`export`, `validate`). Imports only `refsav.schemas` and `refsav.runtime`.
"""
