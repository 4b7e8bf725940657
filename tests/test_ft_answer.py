"""Answers that answer the question, and the data that says whether fine-tuning was worth it:
the extractive contender (answering sentence, never the FAQ's own question, refusal when
the context lacks the answer), citations (never a passage that was not in the context),
the three-way judging and gate, the training/eval examples built from the KB's questions,
and a deliberately useless fine-tune (a tiny random model, trained and evaluated for real)
that the gate rejects, after which `kb ask` stays extractive."""

import json

import pytest

from dagster_project.cli import main as kb
from kb_assets.ft_answer import (REFUSAL_EN, answer_facts, correctness, extractive_answer,
                                 faithful, is_refusal, judge, parse_citations,
                                 sanitize_citations, summarize_contender, three_way_gate)
from resources.ft_config import FTConfig
from resources.store import KBStore
from tests.kbtest import materialized
from tests.test_ft_helpers import (FT_CHAIN, KB_CORE, check_results, lines_of, run_assets,
                                   step_failures, write_topics)

FOOD = ("faq008", "Can the virus that causes COVID-19 be spread through food, including "
        "refrigerated or frozen food? There is no evidence that people get COVID-19 from eating "
        "food. The virus is mainly spread through respiratory droplets from person to person.")
EXPENSES = ("finance/expenses.md", "Expense Policy. Employees must upload travel invoices "
            "within 30 days of the trip in SpendWise. Claims above 500 pounds need director "
            "approval.")


# -- the extractive contender -------------------------------------------------------------
def test_extractive_answers_with_the_answering_sentence_not_the_faq_question():
    ex = extractive_answer("Can the coronavirus spread through food?", [FOOD, EXPENSES])
    assert not ex.refused and ex.doc_id == "faq008"
    assert "no evidence" in ex.answer and "?" not in ex.answer
    assert ex.answer.endswith("(Source: faq008)")


def test_extractive_picks_the_sentence_that_answers_the_question_asked():
    ex = extractive_answer("How many days do I have to upload my travel invoices?", [EXPENSES])
    assert "within 30 days" in ex.answer and "director" not in ex.answer
    assert parse_citations(ex.answer) == ["finance/expenses.md"]


def test_unanswerable_question_gets_a_refusal_not_a_made_up_answer():
    ex = extractive_answer("What is the Wi-Fi password in the Berlin office?", [FOOD, EXPENSES])
    assert ex.refused and ex.answer == REFUSAL_EN and is_refusal(ex.answer)
    assert parse_citations(ex.answer) == []
    zh = extractive_answer("柏林辦公室的無線網路密碼是什麼？", [EXPENSES])
    assert zh.refused and is_refusal(zh.answer)


# -- citations ------------------------------------------------------------------------------
def test_a_citation_never_names_a_passage_that_was_not_in_the_context():
    answer = "Upload invoices within 30 days. (Source: finance/expenses.md) (Source: faq045)"
    clean, kept, dropped = sanitize_citations(answer, ["finance/expenses.md", "faq008"])
    assert kept == ["finance/expenses.md"] and dropped == ["faq045"]
    assert "faq045" not in clean and parse_citations(clean) == ["finance/expenses.md"]
    only_bad, kept, dropped = sanitize_citations("Yes. (Source: faq045)", ["faq008"])
    assert kept == [] and parse_citations(only_bad) == [] and dropped == ["faq045"]
    # The judge counts such an answer as unfaithful even when its text is right.
    ok, why = faithful(answer, {"finance/expenses.md": EXPENSES[1], "faq008": FOOD[1]})
    assert not ok and "not in the context: faq045" in why


def test_faithfulness_needs_support_in_the_cited_passage():
    ctx = {"finance/expenses.md": EXPENSES[1], "faq008": FOOD[1]}
    assert faithful("Upload them within 30 days of the trip. (Source: finance/expenses.md)", ctx)[0]
    ok, why = faithful("Upload them within 90 days of the trip. (Source: finance/expenses.md)", ctx)
    assert not ok and why.startswith("unsupported")
    ok, why = faithful("Upload them within 30 days of the trip. (Source: faq008)", ctx)
    assert not ok  # supported by a passage, but not by the one it cites
    assert faithful("Within 30 days.", ctx) == (False, "no citation")


# -- judging and the gate ------------------------------------------------------------------
def item(answerable, reference="Upload invoices within 30 days in SpendWise."):
    return {"answerable": answerable, "facts": answer_facts(reference),
            "context": {"finance/expenses.md": EXPENSES[1]}}


def test_judging_counts_made_up_answers_and_refusals():
    assert "30" in answer_facts("Upload invoices within 30 days in SpendWise.")
    good = "Upload travel invoices within 30 days of the trip in SpendWise. (Source: finance/expenses.md)"
    assert correctness(good, item(True)["facts"]) == 1.0
    assert correctness(REFUSAL_EN, item(True)["facts"]) == 0.0
    items = [item(True), item(False)]
    honest = summarize_contender("x", [judge(good, items[0]), judge(REFUSAL_EN, items[1])], items, 1.0)
    liar = summarize_contender("y", [judge(good, items[0]), judge(good, items[1])], items, 1.0)
    assert honest.refusal_accuracy == 1.0 and liar.refusal_accuracy == 0.0
    assert honest.faithfulness == 1.0 and honest.score > liar.score
    assert honest.latency_s == 0.5


def test_gate_requires_beating_both_base_and_extractive():
    items = [item(True), item(False)]
    good = "Upload travel invoices within 30 days of the trip in SpendWise. (Source: finance/expenses.md)"
    best = summarize_contender("extractive", [judge(good, items[0]), judge(REFUSAL_EN, items[1])],
                               items, 0.0)
    bad = summarize_contender("fine-tuned", [judge("Claims go to HR.", items[0]),
                                             judge("Yes, 12 days.", items[1])], items, 1.0)
    base = summarize_contender("base", [judge("", items[0]), judge("", items[1])], items, 1.0)
    passed, reason = three_way_gate(bad, [base, best], 0.02)
    assert not passed and "extractive" in reason and "not worth it" in reason
    passed, _ = three_way_gate(best, [base, bad], 0.02)
    assert passed


# -- examples from the KB's questions (real Dagster run, real DuckDB and retrieval) ---------
TOPICS8 = ["parking", "expenses", "laptops", "travel", "security", "overtime", "wellbeing",
           "visitors"]


def cfg(paths, **kw) -> FTConfig:
    return FTConfig(root=str(paths.home / "ft"), **{"min_examples": 8, **kw})


def test_examples_answer_their_question_and_a_share_refuses(kb_paths):
    write_topics(kb_paths, TOPICS8)
    r = run_assets(kb_paths, KB_CORE + ["ft_dataset"], ft_config=cfg(kb_paths))
    assert r.success, step_failures(r)
    md = materialized(r)["ft_dataset"]
    assert md["questions_kind"] == "synthetic" and md["refusal_examples"] > 0
    folder = kb_paths.home / "ft" / "1"
    train = lines_of(folder / "train.jsonl")
    held = {json.loads(x)["relevant"][0] for x in (folder / "eval_items.jsonl").read_text().splitlines()}
    refusals = [x for x in train if is_refusal(x["messages"][2]["content"])]
    assert 0.1 <= len(refusals) / len(train) <= 0.4  # about a quarter
    for x in train:
        user, target = x["messages"][1]["content"], x["messages"][2]["content"]
        assert not any(f"(source: {d})" in user for d in held)  # no held-out text in training
        if x in refusals:
            continue
        cited = parse_citations(target)
        assert len(cited) == 1 and f"(source: {cited[0]})" in user  # cites a passage shown
        assert not target.split(" (Source:")[0].endswith("?")
    items = [json.loads(x) for x in (folder / "eval_items.jsonl").read_text().splitlines()]
    assert items and {it["answerable"] for it in items} == {True, False}
    for it in items:
        docs = [p["doc_id"] for p in it["passages"]]
        if it["case"] == "context from other documents":
            assert not set(docs) & set(it["relevant"]) and not it["answerable"]
        assert it["facts"] and it["question"]


# -- a deliberately useless fine-tune -------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A randomly initialised 1-layer Llama with SmolLM2's tokenizer: a real model that can
    be LoRA-trained and generate, and cannot answer anything."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from resources.llm import PACKAGED_GGUF, packaged_model_folder

    folder = tmp_path_factory.mktemp("tiny-model")
    tok = AutoTokenizer.from_pretrained(str(packaged_model_folder()), gguf_file=PACKAGED_GGUF)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_gate_rejects_a_fine_tune_that_does_not_beat_the_extractive_answer(kb_paths, tiny_model,
                                                                          capsys):
    from mlflow import MlflowClient

    from resources.finetuner import LocalLoRAFineTuner
    from resources.llm import LLM
    from resources.registry import registered_versions

    write_topics(kb_paths, TOPICS8)
    r = run_assets(kb_paths, KB_CORE + FT_CHAIN, ft_config=cfg(kb_paths, eval_max_new_tokens=16),
                   finetuner=LocalLoRAFineTuner(base_model_path=tiny_model, max_steps=1,
                                                batch_size=2, eval_loss_examples=1),
                   llm=LLM(base_model_path=tiny_model))
    assert "ft_eval" in materialized(r), step_failures(r)
    ev = materialized(r)["ft_eval"]
    assert ev["gate_passed"] is False and "extractive" in ev["gate_reason"]
    assert ev["extractive_score"] > ev["ft_score"]
    assert ev["n_unanswerable"] > 0 and ev["extractive_refusal_accuracy"] > 0
    assert "Fine-tuning was not worth it" in ev["three_way"]
    assert "| correctness (key facts) |" in ev["three_way"]
    check = check_results(r)["ft_beats_base"]
    assert not check.passed and "extractive" in check.description
    assert materialized(r).get("assistant_release", {}).get("production_version", 0) == 0
    store = KBStore(db_path=str(kb_paths.db))
    row = registered_versions(store, "kb-assistant")[0]
    assert row["status"] == "rejected"
    client = MlflowClient(tracking_uri=kb_paths.mlflow_uri)
    run = client.get_run(row["run_id"])
    assert "extractive_score" in run.data.metrics and "ft_refusal_accuracy" in run.data.metrics
    arts = {a.path for a in client.list_artifacts(row["run_id"], "ft_eval")}
    assert {"ft_eval/three_way_table.json", "ft_eval/three_way.md"} <= arts

    capsys.readouterr()
    assert kb(["ask", "How far ahead must trains and flights be booked?", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["contender"] == "extractive" and obj["assistant_version"] is None
    assert obj["kb_version"] == 1 and "14 days" in obj["answer"] and not obj["refused"]
    assert [c["doc_id"] for c in obj["citations"]] == ["travel/travel_policy.md"]
    assert {c["doc_id"] for c in obj["citations"]} <= {s["doc_id"] for s in obj["sources"]}


def test_scored_items_keep_the_share_of_unanswerable_ones():
    from kb_assets.ft_release import stratified_pick

    items = []
    for d in range(30):  # each document: an answerable item first, every other one unanswerable
        items.append({"relevant": [f"d{d}"], "answerable": True})
        if d % 2 == 0:
            items.append({"relevant": [f"d{d}"], "answerable": False})
    picked = stratified_pick(items, 20)
    assert len(picked) == 20
    una = sum(not it["answerable"] for it in picked)
    assert una == round(20 * 15 / 45)  # the file's share, not the 0 a plain round-robin gives
    assert len({it["relevant"][0] for it in picked if it["answerable"]}) == 20 - una
