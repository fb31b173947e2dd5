"""The named QA protocols (MME, MMBench circular, vanilla multiple choice) and their lookup."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from refsav.schemas.errors import SchemaError


@dataclass(frozen=True)
class QAProtocol:
    name: str
    source: str  # the official scorer this reproduces
    description: str
    kind: Literal["mcq", "mme"]
    circular: bool = False


QA_PROTOCOLS: dict[str, QAProtocol] = {
    p.name: p
    for p in [
        QAProtocol(
            "mcq",
            "open-compass/VLMEvalKit vlmeval/dataset/image_mcq.py (mcq_vanilla_eval + report_acc)",
            "Multiple choice, vanilla: each row is one question; the option letter is extracted from the "
            "answer with VLMEvalKit's can_infer (optional LLM judge, else exact matching: unresolved = wrong); "
            "accuracy over rows, per category / l2-category / split.",
            kind="mcq",
        ),
        QAProtocol(
            "mmbench",
            "open-compass/VLMEvalKit vlmeval/dataset/image_mcq.py (mcq_circular_eval + report_acc)",
            "MMBench circular evaluation: rows sharing index % 1e6 are option-rotated copies of one question; "
            "a question counts only if every copy is answered correctly; accuracy over questions, per "
            "category / l2-category / split.",
            kind="mcq",
            circular=True,
        ),
        QAProtocol(
            "mme",
            "open-compass/VLMEvalKit vlmeval/dataset/image_yorn.py + utils/yorn.py (MME_rating)",
            "MME: yes/no extraction (YOrN_Extraction, optional LLM judge); per category "
            "100*acc + 100*acc+ (both questions of an image right), max 200; score = perception "
            "(10 categories, max 2000) + cognition (4 categories, max 800), NaN unless all 14 are present.",
            kind="mme",
        ),
    ]
}


def get_qa_protocol(name: str) -> QAProtocol:
    try:
        return QA_PROTOCOLS[name]
    except KeyError:
        raise SchemaError(f"unknown QA protocol {name!r}; choose from {', '.join(sorted(QA_PROTOCOLS))}") from None
