"""Reading the VLM's answers, and the text-only steps: merging and the ambiguity flag.

VLMs do not always follow the requested answer format, so every parser here returns a
usable value for any text; whether a fallback was needed is reported, never hidden.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_WS = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")
_WORD = re.compile(r"[a-z0-9]+")


def clean(text: str) -> str:
    """One line, no chat-template leftovers, no surrounding quotes."""
    text = re.sub(r"<\|[^|>]*\|>|</?s>", " ", text)
    return _WS.sub(" ", text).strip().strip('"').strip()


def first_sentence(text: str) -> str:
    text = clean(text)
    return _SENTENCE_END.split(text, maxsplit=1)[0] if text else ""


@dataclass(frozen=True)
class ObjectAnswer:
    category: str  # "" when the model did not give one
    description: str
    followed_format: bool


def parse_object_answer(text: str) -> ObjectAnswer:
    category = re.search(r"(?im)^\s*category\s*:\s*(.+)$", text)
    description = re.search(r"(?is)description\s*:\s*(.+)", text)
    if description:
        desc = clean(description.group(1))
        cat = clean(category.group(1)).lower().rstrip(".") if category else ""
        return ObjectAnswer(cat, desc, bool(category))
    return ObjectAnswer(clean(category.group(1)).lower() if category else "", clean(text), False)


@dataclass(frozen=True)
class Verdict:
    passed: bool | None  # None: the checker's answer says neither yes nor no
    reason: str


def parse_verdict(text: str) -> Verdict:
    """YES/NO from the first word that is one of them; the rest is the reason."""
    cleaned = clean(text)
    m = re.search(r"\b(yes|no)\b", cleaned, flags=re.IGNORECASE)
    if not m:
        return Verdict(None, cleaned[:300])
    reason = cleaned[m.end():].lstrip(" .,:;-").strip()
    return Verdict(m.group(1).lower() == "yes", reason[:300])


@dataclass(frozen=True)
class MergedExpressions:
    long: str
    short: list[str]  # 1 to 3
    followed_format: bool


MAX_SHORT_WORDS = 12


def _shorten(text: str, words: int = MAX_SHORT_WORDS) -> str:
    return " ".join(first_sentence(text).rstrip(".").split()[:words])


def merge_fallback(object_description: str, scene_description: str, video_description: str) -> MergedExpressions:
    """The expression built without the model: the first sentence of each stage."""
    parts = [first_sentence(t).rstrip(".") for t in (object_description, scene_description, video_description)]
    parts = [p for p in parts if p]
    long = ("; ".join(parts) + ".") if parts else "the highlighted object."
    return MergedExpressions(long, [_shorten(object_description) or "the highlighted object"], False)


def parse_merge(text: str, object_description: str, scene_description: str, video_description: str) -> MergedExpressions:
    long = re.search(r"(?im)^\s*long\s*:\s*(.+)$", text)
    shorts = [clean(s) for s in re.findall(r"(?im)^\s*short\s*:\s*(.+)$", text)]
    shorts = [_shorten(s) for s in shorts if clean(s)]
    # Dedupe while keeping order: a model that repeats itself still gives 1-3 distinct captions.
    shorts = list(dict.fromkeys(s for s in shorts if s))[:3]
    if long and clean(long.group(1)) and shorts:
        return MergedExpressions(clean(long.group(1)), shorts, True)
    return merge_fallback(object_description, scene_description, video_description)


# Words that carry no identity: two expressions that differ only in these are the same.
_STOP = frozenset(
    "a an the of and or in on at to with its it is are that this which who from by for as "
    "object highlighted video frame frames image scene".split()
)


def content_words(text: str) -> frozenset[str]:
    return frozenset(w for w in _WORD.findall(text.lower()) if w not in _STOP)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


@dataclass(frozen=True)
class Candidate:
    object_id: int
    category: str
    long: str
    short: tuple[str, ...]


def ambiguity(candidates: list[Candidate], threshold: float = 0.8) -> dict[int, list[int]]:
    """For each object, the other objects of the same video its expressions could also refer to.

    Two objects collide when they share a category (or either has none) and either a
    short expression is the same after normalisation or the long expressions use nearly
    the same content words (Jaccard >= threshold): nothing in the text tells them apart.
    This is a conservative text heuristic; the flag asks a human (or the benchmark
    export) to look, it does not delete anything.
    """
    out: dict[int, list[int]] = {c.object_id: [] for c in candidates}
    words = {c.object_id: content_words(c.long) for c in candidates}
    shorts = {c.object_id: {" ".join(sorted(content_words(s))) for s in c.short} for c in candidates}
    for i, a in enumerate(candidates):
        for b in candidates[i + 1:]:
            same_kind = not a.category or not b.category or a.category == b.category
            if not same_kind:
                continue
            if shorts[a.object_id] & shorts[b.object_id] or jaccard(words[a.object_id], words[b.object_id]) >= threshold:
                out[a.object_id].append(b.object_id)
                out[b.object_id].append(a.object_id)
    return out
