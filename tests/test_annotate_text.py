"""Answer parsing, merging, the ambiguity flag and prompt templates (pure logic)."""
import pytest

from refsav.pipelines.annotate.prompts import load_prompts
from refsav.pipelines.annotate.text import (
    Candidate,
    ambiguity,
    parse_merge,
    parse_object_answer,
    parse_verdict,
)
from refsav.schemas.errors import SchemaError


def test_object_answer_in_and_out_of_format():
    a = parse_object_answer("Category: Red Ball\nDescription: A shiny red ball\nwith a white stripe.")
    assert (a.category, a.description, a.followed_format) == ("red ball", "A shiny red ball with a white stripe.", True)
    b = parse_object_answer("  a dog<|im_end|> ")
    assert (b.category, b.description, b.followed_format) == ("", "a dog", False)


@pytest.mark.parametrize("text,passed,reason", [
    ("YES. It is the red ball.", True, "It is the red ball."),
    ("no - the colour is wrong", False, "the colour is wrong"),
    ("Answer: Yes, it matches", True, "it matches"),
    ("banana eyebrow", None, "banana eyebrow"),
    ("", None, ""),
])
def test_verdict(text, passed, reason):
    v = parse_verdict(text)
    assert (v.passed, v.reason) == (passed, reason)


def test_merge_parses_and_dedupes_short_captions():
    m = parse_merge("LONG: the red ball rolling left under the table\nSHORT: red ball\nSHORT: red ball\n"
                    "SHORT: ball under table\nSHORT: fourth one", "o", "s", "v")
    assert m.followed_format and m.long == "the red ball rolling left under the table"
    assert m.short == ["red ball", "ball under table", "fourth one"]


def test_merge_falls_back_to_first_sentences():
    m = parse_merge("gibberish", "A red ball. It is shiny.", "It lies under the table.", "It rolls left.")
    assert not m.followed_format
    assert m.long == "A red ball; It lies under the table; It rolls left."
    assert m.short == ["A red ball"]
    assert 1 <= len(m.short) <= 3


def test_short_captions_are_capped_at_twelve_words():
    m = parse_merge("LONG: x\nSHORT: " + " ".join(f"w{i}" for i in range(30)), "o", "s", "v")
    assert len(m.short[0].split()) == 12


def test_ambiguity_flags_same_category_without_distinguishing_words():
    cands = [
        Candidate(1, "ball", "the red ball on the left rolling down", ("red ball",)),
        Candidate(2, "ball", "the red ball on the left rolling down", ("red ball left",)),
        Candidate(3, "ball", "a small blue ball bouncing near the door", ("blue ball",)),
        Candidate(4, "cup", "the red ball on the left rolling down", ("red ball",)),  # other category
    ]
    out = ambiguity(cands)
    assert out == {1: [2], 2: [1], 3: [], 4: []}


def test_ambiguity_by_identical_short_caption():
    out = ambiguity([Candidate(1, "dog", "a brown dog sleeping by the sofa", ("the dog",)),
                     Candidate(2, "dog", "a white dog chasing a ball outside", ("The dog",))])
    assert out == {1: [2], 2: [1]}


def test_prompts_load_newest_version_and_hash_content(tmp_path):
    base = load_prompts()
    assert [r.template_id for r in base.refs] == ["object/v1", "check/v1", "scene/v1", "video/v1", "merge/v1"]
    for stage in ("object", "check", "scene", "video", "merge"):
        (tmp_path / f"{stage}.v1.txt").write_text(base[stage].text)
    (tmp_path / "scene.v2.txt").write_text("Where is it? {object_description} ({highlight})")
    custom = load_prompts(tmp_path)
    assert custom["scene"].template_id == "scene/v2"
    assert custom["scene"].sha256 != base["scene"].sha256 and custom["object"].sha256 == base["object"].sha256


def test_prompts_reject_unknown_placeholder_and_missing_stage(tmp_path):
    base = load_prompts()
    for stage in ("object", "check", "scene", "video"):
        (tmp_path / f"{stage}.v1.txt").write_text(base[stage].text)
    with pytest.raises(SchemaError, match="merge"):
        load_prompts(tmp_path)
    (tmp_path / "merge.v1.txt").write_text("{object_description} {colour}")
    with pytest.raises(SchemaError, match=r"merge\.v1\.txt.*colour"):
        load_prompts(tmp_path)
