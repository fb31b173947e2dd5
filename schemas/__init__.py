"""Data contracts shared by `pipelines`, `benchmark` and `model`.

Each record is a frozen dataclass with an explicit Arrow schema for Parquet;
readers for outside formats (SA-V JSON, Ref-SAV JSON, meta_expressions +
mask_dict) turn files into these records and report bad input as a one-line
`SchemaError` naming the file, the record and the field.
"""
from .errors import RefsavError, SchemaError
from .expression import (
    Confusable, Consistency, Expression, FileHash, GrounderIdentity, Grounding, GroundingScore, PromptRef,
    Provenance,
)
from .predictions import ImagePrediction, QAPrediction, VideoPrediction
from .rle import Rle
from .scores import LeaderboardEntry, ScoreRecord
from .version import __version__
from .video import Masklet, Video

__all__ = [
    "Confusable",
    "Consistency",
    "Expression",
    "FileHash",
    "GrounderIdentity",
    "Grounding",
    "GroundingScore",
    "ImagePrediction",
    "LeaderboardEntry",
    "Masklet",
    "PromptRef",
    "Provenance",
    "QAPrediction",
    "Rle",
    "RefsavError",
    "SchemaError",
    "ScoreRecord",
    "Video",
    "VideoPrediction",
    "__version__",
]
