"""The protocol registry (refsav.schemas.protocols) and benchmark's scorers name the same
protocols: every registered protocol can be scored, every scorer is registered, and
both agree on what ranks a submission."""
import dataclasses

import pytest

from refsav.benchmark.davis import DAVIS_PROTOCOLS
from refsav.benchmark.protocols import VIDEO_PROTOCOLS
from refsav.benchmark.qa_inputs import QA_PROTOCOLS
from refsav.benchmark.refcoco import IMAGE_PROTOCOLS, get_image_protocol
from refsav.schemas.errors import SchemaError
from refsav.schemas.protocols import PROTOCOLS, get_protocol, protocol_names, protocols_of
from refsav.schemas.refer import refer_layout

SCORERS = {"refvos": VIDEO_PROTOCOLS, "davis": DAVIS_PROTOCOLS, "refer": IMAGE_PROTOCOLS, "qa": QA_PROTOCOLS}


def test_every_registered_protocol_has_a_scorer_and_every_scorer_is_registered():
    for family, scorers in SCORERS.items():
        assert list(protocols_of(family)) == [n for n in protocol_names() if n in scorers], family
        assert set(protocols_of(family)) == set(scorers), family
        for name, scoring in scorers.items():
            assert scoring.name == name
    assert sorted(protocol_names()) == sorted(n for scorers in SCORERS.values() for n in scorers)


def test_registry_and_scorers_agree_on_the_primary_metric():
    for name in protocols_of("refvos") | protocols_of("davis"):
        assert get_protocol(name).primary_metric == "J&F"  # what score_refvos and score_davis rank by
    for name, scoring in IMAGE_PROTOCOLS.items():
        assert get_protocol(name).primary_metric in scoring.metrics
    assert {name: get_protocol(name).primary_metric for name in QA_PROTOCOLS} == {
        "mcq": "accuracy", "mmbench": "accuracy", "mme": "score"}


def test_only_refer_protocols_have_a_layout():
    for p in PROTOCOLS.values():
        assert (p.refer is not None) == (p.family == "refer"), p.name
    assert get_protocol("grefcoco").refer.multi_target and not get_protocol("refcoco").refer.multi_target
    assert get_protocol("refcocog").refer.refs_names("google") == ["refs(google).p"]
    assert refer_layout("refcoco+") is refer_layout(get_protocol("refcoco+")) is get_protocol("refcoco+").refer


def test_records_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_protocol("refsav").family = "qa"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_protocol("refcoco").refer.dataset = "x"  # type: ignore[misc]


def test_unknown_names_are_refused_with_the_choices():
    with pytest.raises(SchemaError) as err:
        get_protocol("refcoco-")
    assert str(err.value) == f"unknown protocol 'refcoco-'; choose from {', '.join(sorted(PROTOCOLS))}"
    for lookup in (refer_layout, get_image_protocol):
        with pytest.raises(SchemaError) as err:
            lookup("mevis")
        assert str(err.value) == "unknown image protocol 'mevis'; known: grefcoco, refcoco, refcoco+, refcocog"
    assert protocols_of("qa") == {n: PROTOCOLS[n] for n in ("mcq", "mme", "mmbench")}
