"""Ground truth, predictions and named protocols for the QA benchmarks: MME,
MMBench (circular) and generic multiple choice, scored with `refsav.benchmark.qa`.

Ground truth is the published VLMEvalKit TSV (or a JSONL / JSON list of
objects with the same field names). Column names are matched the way
VLMEvalKit's evaluators match them: lower-cased, except single capital
letters, which are option columns. Only the needed columns are read, in
chunks, so a TSV with base64 images never sits in memory as a whole.

Predictions may be refsav `QAPrediction` Parquet, JSONL / JSON of
`{question_id | index, prediction}` (or a JSON object mapping id to
prediction), a VLMEvalKit result TSV / CSV / XLSX (`index` + `prediction`
columns; XLSX needs openpyxl), or a `.zip` (or folder) of any of these.
Problems with a submission are `Issue`s, never exceptions: a missing
question counts as wrong, as it would in VLMEvalKit where an absent answer
extracts to nothing; extra and duplicate ids are reported and ignored.
Malformed files raise a one-line `SchemaError`.

One module per topic: `protocols`, `records`, `ids` (ids and cells), `tables` (table
reading), `mcq_ground_truth`, `mme_ground_truth`, `predictions` and `scoring`; this
package re-exports their public names.
"""
from .ids import canonical_id
from .mcq_ground_truth import read_mcq_ground_truth
from .mme_ground_truth import read_mme_ground_truth
from .predictions import load_qa_predictions
from .protocols import QA_PROTOCOLS, QAProtocol, get_qa_protocol
from .records import MCQQuestion, MMEQuestion, QAPredictions, QuestionResult
from .scoring import match_predictions, score_qa

__all__ = [
    "MCQQuestion",
    "MMEQuestion",
    "QAPredictions",
    "QAProtocol",
    "QA_PROTOCOLS",
    "QuestionResult",
    "canonical_id",
    "get_qa_protocol",
    "load_qa_predictions",
    "match_predictions",
    "read_mcq_ground_truth",
    "read_mme_ground_truth",
    "score_qa",
]
