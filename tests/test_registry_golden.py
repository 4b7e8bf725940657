"""Golden-set loaders: the project jsonl format and BEIR folders, and their error messages."""

import json

import pytest

from kb_assets.golden import DEFAULT_GOLDEN, GoldenError, load_golden


def _jsonl(tmp_path, rows, name="golden.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n",
                 encoding="utf-8")
    return p


def test_project_jsonl(tmp_path):
    p = _jsonl(tmp_path, [
        {"qid": "q1", "question": "How many leave days?", "doc_id": "hr/leave.md", "lang": "en"},
        "",
        {"qid": 2, "question": " VPN? ", "doc_ids": ["it-vpn", "it-remote"]},
    ])
    gs = load_golden(p)
    assert gs.format == "jsonl" and len(gs.queries) == 2 and len(gs.sha256) == 64
    assert gs.queries[0].relevant == {"hr/leave.md": 1.0} and gs.queries[0].lang == "en"
    assert gs.queries[1].qid == "2" and gs.queries[1].question == "VPN?"
    assert gs.queries[1].relevant == {"it-vpn": 1.0, "it-remote": 1.0}


@pytest.mark.parametrize("bad, message", [
    ('{"qid": "q2", "question": "x", "doc_id": "d"', r"golden.jsonl:2: not valid JSON"),
    ('["q2", "x"]', r":2: expected a JSON object"),
    ({"question": "x", "doc_id": "d"}, r":2: missing field 'qid'"),
    ({"qid": "q2", "question": "  ", "doc_id": "d"}, r":2: field 'question'"),
    ({"qid": "q2", "question": "x"}, r":2: field 'doc_id'"),
    ({"qid": "q2", "question": "x", "doc_ids": []}, r":2: field 'doc_id'"),
    ({"qid": "q1", "question": "x", "doc_id": "d"}, r":2: duplicate qid 'q1'"),
])
def test_project_jsonl_errors_name_file_line_and_field(tmp_path, bad, message):
    p = _jsonl(tmp_path, [{"qid": "q1", "question": "ok", "doc_id": "d"}, bad])
    with pytest.raises(GoldenError, match=message):
        load_golden(p)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(GoldenError, match="does not exist"):
        load_golden(tmp_path / "nope.jsonl")
    with pytest.raises(GoldenError, match="has no questions"):
        load_golden(_jsonl(tmp_path, [""]))


def _beir(tmp_path, queries, qrels):
    d = tmp_path / "beir"
    (d / "qrels").mkdir(parents=True)
    (d / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n",
                                     encoding="utf-8")
    (d / "qrels" / "test.tsv").write_text(qrels, encoding="utf-8")
    return d


def test_beir_folder(tmp_path):
    d = _beir(tmp_path, [{"_id": "1", "text": "leave days"}, {"_id": "2", "text": "vpn"},
                         {"_id": "3", "text": "not judged"}],
              "query-id\tcorpus-id\tscore\n1\tdoc-a\t1\n1\tdoc-b\t2\n2\tdoc-c\t1\n2\tdoc-d\t0\n")
    gs = load_golden(d)
    assert gs.format == "beir" and gs.skipped == 1
    assert {q.qid: q.relevant for q in gs.queries} == {
        "1": {"doc-a": 1.0, "doc-b": 2.0}, "2": {"doc-c": 1.0}}


def test_beir_without_header(tmp_path):
    d = _beir(tmp_path, [{"_id": "q", "text": "t"}], "q\tdoc\t1\n")
    assert load_golden(d).queries[0].relevant == {"doc": 1.0}


@pytest.mark.parametrize("qrels, message", [
    ("q\tdoc\n", r"test.tsv:1: expected query-id, corpus-id, score"),
    ("q\tdoc\thigh\n", r"test.tsv:1: score 'high' is not a number"),
    ("zz\tdoc\t1\n", r"test.tsv:1: query-id 'zz' is not in queries.jsonl"),
])
def test_beir_errors(tmp_path, qrels, message):
    d = _beir(tmp_path, [{"_id": "q", "text": "t"}], qrels)
    with pytest.raises(GoldenError, match=message):
        load_golden(d)


def test_beir_folder_must_have_both_files(tmp_path):
    (tmp_path / "b").mkdir()
    with pytest.raises(GoldenError, match="lacks queries.jsonl"):
        load_golden(tmp_path / "b")


def test_default_golden_is_the_sample_set():
    assert load_golden(None).path == DEFAULT_GOLDEN
    assert len(load_golden(None).queries) > 50
