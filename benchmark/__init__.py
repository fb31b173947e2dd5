"""refsav.benchmark: scoring predictions with the official protocols, and leaderboards.

Video referring segmentation (`score`), DAVIS-2017 (`davis`), the refer image datasets
(`refcoco`) and QA (`qa`), each returning one `report.ScoreReport` shape. Imports only
`refsav.schemas` and `refsav.runtime`.
"""
