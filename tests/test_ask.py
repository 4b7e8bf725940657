"""`kb ask` on a real KB: nothing relevant -> says so without asking a model; before any
fine-tune passed its gate it answers extractively (no model) with its cited source and says
so; the base model answers only when asked; bad input is one line."""

import json

import pytest

from dagster_project.cli import main as kb
from tests.kbtest import module_home, use_home
from tests.test_ft_helpers import KB_CORE, run_assets, write_topics

TOPICS = ["parking", "expenses", "laptops", "travel"]


@pytest.fixture(scope="module")
def built_home(tmp_path_factory):
    """One KB built for the module: `kb ask` only reads it (the tests that need no KB, or
    another one, take `kb_paths`)."""
    with module_home(tmp_path_factory, "ask") as paths:
        write_topics(paths, TOPICS)
        assert run_assets(paths, KB_CORE).success
        yield paths


@pytest.fixture
def kb_built(built_home, monkeypatch):
    return use_home(built_home, monkeypatch)


def test_nothing_relevant_is_said_not_invented(kb_built, capsys):
    from resources import llm

    loaded = dict(llm._PRISTINE)
    assert kb(["ask", "Quelle est la température de fusion du tungstène ?"]) == 0
    out = capsys.readouterr().out
    assert "Nothing in the knowledge base (version 1" in out and "no grounded answer" in out
    assert "Sources:" not in out and llm._PRISTINE == loaded  # no model was loaded or asked
    assert kb(["ask", "Quelle est la température de fusion du tungstène ?", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["answer"] is None and obj["sources"] == [] and obj["kb_version"] == 1


@pytest.mark.parametrize("argv,message", [
    (["ask", "   "], "the question is empty"),
    (["ask", "parking", "-k", "0"], "-k must be at least 1"),
])
def test_bad_input_is_one_line(kb_built, capsys, argv, message):
    assert kb(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_no_kb_yet_is_a_clear_error(kb_paths, capsys):
    assert kb(["ask", "How many parking spaces are there?"]) == 2
    assert "run `kb build` first" in capsys.readouterr().err


def test_extractive_answer_before_any_fine_tune_passed_and_says_so(kb_built, capsys):
    from resources import llm

    loaded = dict(llm._PRISTINE)
    assert kb(["ask", "How many car spaces can staff book?"]) == 0
    out = capsys.readouterr().out
    assert "no fine-tuned assistant has passed its gate: extractive answer" in out
    answer, sources = out.split("Sources:")
    answer = " ".join(answer.split())  # the answer is wrapped at 100 columns
    assert "40 car spaces" in answer and "(Source: parking/parking_policy.md)" in answer
    assert "parking/parking_policy.md" in sources.splitlines()[1] and "(cited)" in sources
    assert llm._PRISTINE == loaded  # no language model was loaded
    assert kb(["ask", "How many car spaces can staff book?", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["contender"] == "extractive" and obj["assistant_version"] is None
    assert obj["kb_version"] == 1 and not obj["refused"]
    assert [c["doc_id"] for c in obj["citations"]] == ["parking/parking_policy.md"]


def test_fine_tuned_is_refused_when_none_passed(kb_built, capsys):
    assert kb(["ask", "How many car spaces can staff book?", "--contender", "fine-tuned"]) == 2
    assert "no production kb-assistant" in capsys.readouterr().err


@pytest.mark.slow
def test_base_model_answers_when_asked(kb_built, capsys):
    assert kb(["ask", "How many car spaces can staff book?", "--contender", "base",
               "--max-new-tokens", "20", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["contender"] == "base" and obj["answer"] is not None
    assert {c["doc_id"] for c in obj["citations"]} <= {s["doc_id"] for s in obj["sources"]}
    assert obj["sources"][0]["doc_id"] == "parking/parking_policy.md"
