"""Pure fine-tuning data logic: sections, templates, split without leakage, replay,
incremental planning, validation, scoring."""

import json

import pytest

from kb_core.ft_data import (DatasetSettings, SourceDoc, build_examples, clean_for_export,
                               first_sentences, focus_passage, split_group, split_sections,
                               template_questions, with_distractors)
from kb_assets.ft_plan import (eval_groups, find_leaks, plan_dataset, select_replay,
                               validate_line)
from kb_assets.ft_scoring import fact_coverage, gate, key_facts, pick_eval, summarize

S = DatasetSettings(min_examples=1)


def doc(key: str, title: str = "Leave Policy", body: str | None = None, flags=()) -> SourceDoc:
    body = body or (f"# {title}\n\n## 1. Entitlement\nYou get 25 days of leave per year.\n\n"
                    f"## 2. Carry over\nUp to five days may be carried into the next year.\n")
    return SourceDoc(key, key, title, body, f"h-{hash(body) & 0xffff}", tuple(flags))


NAMES = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
         "november oscar papa quebec romeo sierra tango").split()


def corpus(n: int) -> list[SourceDoc]:
    return [doc(f"{w}/policy.md", f"{w.title()} Policy",
                f"{w.title()} Policy\n\n{w.title()} scope\nThis policy applies to team {w} only, "
                f"always.\n\n{w.title()} deadlines\nSubmit form F-{i} within {i + 2} days of the "
                f"event.\n") for i, w in enumerate(NAMES[:n])]


@pytest.mark.parametrize("text,headings", [
    ("# T\n\n## 1. Entitlement\nYou get 25 days of paid leave.\n\n## 2. Booking\nBook in the HR app early.",
     ["Entitlement", "Booking"]),
    ("T\nOwner: People team, effective 2025.\n\n1. PURPOSE\nThis explains what to do if you are ill.",
     [None, "Purpose"]),
    ("特休辦法\n\n一、特休天數\n到職滿一年者給予特休七日，依年資遞增。\n\n二、請假程序\n請於兩個工作天前於系統申請。",
     ["特休天數", "請假程序"]),
    ("T\n\nRooms\nThe office has four rooms:\n- Thames: 18 people\n- Wye: 4 people",
     ["Rooms"]),
    ("T\n\nContact\nEmail: help@example.com for anything about this policy at all.", ["Contact"]),
])
def test_split_sections_finds_headings(text, headings):
    got = [s.heading for s in split_sections("T", text, min_chars=10)]
    assert got == headings


def test_field_lines_are_not_headings():
    secs = split_sections("T", "T\n\nContact\n電子郵件:abc@example.com\n分機 2215 找承辦人員即可。", 5)
    assert [s.heading for s in secs] == ["Contact"]


@pytest.mark.parametrize("title,heading,n,lang_char", [
    ("Annual Leave Policy", "Carrying over", 2, "?"),
    ("特別休假管理辦法", "未休畢之處理", 3, "？"),
    ("Annual Leave Policy", None, 2, "?"),
])
def test_template_questions_distinct_and_deterministic(title, heading, n, lang_char):
    a = template_questions(title, heading, n, "salt")
    assert a == template_questions(title, heading, n, "salt")
    assert len(set(a)) == len(a) == n
    assert all(q.endswith(lang_char) for q in a)


@pytest.mark.parametrize("text,budget,expect", [
    ("One two three. Four five six. Seven.", 6, "One two three. Four five six."),
    ("One two three. Four five six.", 2, "One two…"),
    ("短句。第二句。", 10, "短句。第二句。"),
    ("短句。第二句。", 6, "短句。"),
    ("一二三四五六", 6, "一二三…"),
])
def test_first_sentences(text, budget, expect):
    assert first_sentences(text, budget) == expect


@pytest.mark.parametrize("doc_id,group", [
    ("hr/annual_leave_en.md", "hr/annual_leave"), ("hr/annual_leave_zh.md", "hr/annual_leave"),
    ("it-vpn-en", "it-vpn"), ("it-vpn-zh", "it-vpn"), ("finance/travel.html", "finance/travel"),
])
def test_translations_share_a_split_group(doc_id, group):
    assert split_group(doc_id) == group


def test_pii_is_masked_in_every_message():
    d = doc("hr/contact.md", "Contact Policy",
            "Contact Policy\n\nWho to call\nCall Jane on +44 20 7946 0958 or mail jane.doe@corp.example "
            "about anything in this policy.\n")
    ex = build_examples(d, S)
    assert ex
    blob = "".join(x.line() for x in ex)
    assert "jane.doe@corp.example" not in blob and "7946 0958" not in blob
    assert "[EMAIL]" in blob and "[PHONE]" in blob


def test_examples_are_valid_chat_lines_grounded_in_the_document():
    ex = build_examples(doc("hr/leave.md"), S)
    assert len(ex) == 4  # 2 sections x 2 paraphrases
    for x in ex:
        assert validate_line(x.line()) == []
        msgs = json.loads(x.line())["messages"]
        assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
        answer = msgs[2]["content"].split(" (Source:")[0]
        assert answer in msgs[1]["content"]  # grounded: the answer is taken from the context
        assert msgs[2]["content"].endswith("(Source: hr/leave.md)")


def test_house_style_is_a_setting():
    s = DatasetSettings(system_prompt="Be terse.", answer_template="Per {title}: {answer}")
    x = build_examples(doc("hr/leave.md"), s)[0]
    msgs = json.loads(x.line())["messages"]
    assert msgs[0]["content"] == "Be terse."
    assert msgs[2]["content"].startswith("Per Leave Policy: ")


@pytest.mark.parametrize("n_groups", [2, 5, 12, 40])
def test_eval_split_holds_out_whole_groups(n_groups):
    groups = [f"g{i}" for i in range(n_groups)]
    held = eval_groups(groups, S)
    assert 1 <= len(held) < n_groups


def test_eval_groups_are_stable_when_documents_are_added():
    before = eval_groups([f"g{i}" for i in range(30)], S)
    after = eval_groups([f"g{i}" for i in range(60)], S)
    assert before <= after


def test_no_eval_question_or_near_duplicate_in_training():
    docs = corpus(12)
    # Same text under a different group: its questions would be exact duplicates.
    docs.append(SourceDoc("copy/policy.md", "copy/policy.md", "Policy number 0",
                          docs[0].text, "x"))
    plan = plan_dataset([x for d in docs for x in build_examples(d, S)], S, None, None, None)
    train_q = [x.question for x in plan.pool]
    assert plan.eval
    assert not find_leaks([x.question for x in plan.eval], train_q, S.near_duplicate_threshold)
    assert not {x.group for x in plan.eval} & {x.group for x in plan.pool}
    held_docs = {x.doc_id for x in plan.eval}
    for x in plan.pool:  # no held-out text reaches training through distractor passages
        assert not any(f"(source: {d})" in x.line() for d in held_docs)


@pytest.mark.parametrize("ev,train,leaks", [
    (["How many days of leave do I get?"], ["How many days of leave do I get?"], 1),
    (["How many days of leave do I get?"], ["how many days of leave do i get ?"], 1),
    (["How many days of leave do I get?"], ["Who approves travel bookings abroad?"], 0),
    (["請問特休假有幾天？"], ["請問特休假有幾天?"], 1),
])
def test_find_leaks(ev, train, leaks):
    assert len(find_leaks(ev, train, 0.8)) == leaks


@pytest.mark.parametrize("n_old,share,expect", [(100, 0.2, 20), (7, 0.2, 2), (10, 0.0, 0), (3, 1.0, 3)])
def test_replay_share(n_old, share, expect):
    from dataclasses import replace

    one = build_examples(doc("a/x.md"), S)[0]
    old = [replace(one, example_id=f"id{i}") for i in range(n_old)]
    picked = select_replay(old, share, "salt")
    assert len(picked) == expect
    assert picked == select_replay(old, share, "salt")
    assert set(x.example_id for x in picked) <= set(x.example_id for x in old)


def _plan(docs, prev=None):
    ex = [x for d in docs for x in build_examples(d, S)]
    if prev is None:
        return plan_dataset(ex, S, None, None, None)
    return plan_dataset(ex, S, {x.example_id for x in prev.pool}, {x.doc_key for x in prev.pool},
                        S.version)


def test_incremental_add_trains_new_examples_plus_replay():
    v1 = _plan(corpus(10))
    assert v1.mode == "full" and len(v1.train) == len(v1.pool)
    assert not v1.leaks_dropped
    v2 = _plan(corpus(14), v1)  # four new documents; some land in training
    new_ids = {x.example_id for x in v2.pool} - {x.example_id for x in v1.pool}
    assert new_ids and v2.mode == "incremental"
    assert {x.example_id for x in v2.fresh} == new_ids
    still_valid = {x.example_id for x in v1.pool} & {x.example_id for x in v2.pool}
    assert len(still_valid) > len(v1.pool) // 2  # distractor choices mostly stay put
    assert len(v2.replay) == -(-len(still_valid) * 2 // 10)  # ceil(20% of older examples)
    assert {x.example_id for x in v2.replay} <= still_valid
    assert len(v2.train) == len(v2.fresh) + len(v2.replay)


def test_incremental_edit_replaces_the_edited_sections_examples():
    docs = corpus(10)
    v1 = _plan(docs)
    key = v1.pool[0].doc_key
    edited = [SourceDoc(d.doc_key, d.doc_id, d.title, d.text.replace("within", "no later than"),
                        d.content_hash + "x") if d.doc_key == key else d for d in docs]
    v2 = _plan(edited, v1)
    assert v2.mode == "incremental"
    old = [x for x in v1.pool if x.doc_key == key]
    stale = {x.example_id for x in old if "within" in x.passage}
    assert stale and stale <= set(v2.removed_ids)  # examples of the edited text are gone
    assert not any("within" in x.passage for x in v2.pool if x.doc_key == key)
    # Untouched examples stay (not re-learned) unless they borrowed the edited passage.
    kept = {x.example_id for x in v1.pool if "within" not in x.line()
            or ("within" not in x.passage and x.doc_key != key and key not in x.line())}
    assert kept <= {x.example_id for x in v2.pool}
    assert all("no later than" in x.line() for x in v2.fresh)
    assert {x.doc_key for x in v2.fresh if "no later than" in x.passage} == {key}
    assert all(x.doc_content_hash.endswith("x") for x in v2.pool if x.doc_key == key)


def test_delete_forces_a_full_rebuild_without_the_document():
    docs = corpus(10)
    v1 = _plan(docs)
    gone = v1.pool[0].doc_key
    v2 = _plan([d for d in docs if d.doc_key != gone], v1)
    assert v2.mode == "full" and v2.removed_docs == [gone]
    assert gone not in {x.doc_key for x in v2.train}


def test_nothing_changed_means_same_content_hash():
    docs = corpus(10)
    v1 = _plan(docs)
    assert _plan(list(reversed(docs)), v1).content_sha256 == v1.content_sha256


def test_prompt_injection_documents_are_not_eligible():
    from kb_core.ft_data import eligible

    assert not eligible(doc("x.md", flags=("prompt_injection",)), S)
    assert eligible(doc("x.md", flags=("prompt_injection",)), DatasetSettings(exclude_flags=()))


@pytest.mark.parametrize("line,problem", [
    ("not json", "not JSON"),
    ('{"messages": "hi"}', "messages: missing or not a list"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
     "roles are"),
    ('{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": " "}, '
     '{"role": "assistant", "content": "a"}]}', "messages[1].content (user): empty"),
    ('{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, '
     '{"role": "assistant", "content": "' + "x" * 2500 + '"}]}', "2500 characters > 2000"),
])
def test_validate_line_reports_field_and_problem(line, problem):
    problems = validate_line(line)
    assert problems and problem in problems[0]


def test_clean_for_export_strips_markdown_emphasis():
    assert clean_for_export("You get **25 days** of `leave`.") == "You get 25 days of leave."


# -- scoring -----------------------------------------------------------------------------------
@pytest.mark.parametrize("ref,facts", [
    ("You get 25 working days, up to 30 days. (Source: hr/leave.md)", ["25", "30", "hr/leave.md"]),
    ("Book in PeopleHub by 10:00. (Source: x)", ["10:00", "PeopleHub", "x"]),
    ("住宿上限 NT$3,200。 (Source: finance/t.txt)", ["NT$3,200", "finance/t.txt"]),
    ("公司加給「北風假」2 日。", ["2", "北風假"]),
    ("No facts here.", []),
])
def test_key_facts(ref, facts):
    assert key_facts(ref) == facts


@pytest.mark.parametrize("answer,facts,cov", [
    ("You get 25 days (Source: hr/leave.md)", ["25", "30", "hr/leave.md"], 2 / 3),
    ("nothing", ["NT$3,200"], 0.0),
    ("上限 NT$ 3200", ["NT$3,200"], 1.0),
    ("anything", [], None),
])
def test_fact_coverage(answer, facts, cov):
    assert fact_coverage(answer, facts) == (pytest.approx(cov) if cov is not None else None)


@pytest.mark.parametrize("tuned,base,margin,passed", [
    ([0.9, 0.8], [0.5, 0.6], 0.02, True),
    ([0.6, 0.6], [0.59, 0.6], 0.02, False),
    ([0.5], [0.7], 0.0, False),
])
def test_gate_requires_beating_base_by_margin(tuned, base, margin, passed):
    t = summarize(tuned, [None] * len(tuned), 0.75)
    b = summarize(base, [None] * len(base), 0.75)
    assert gate(t, b, margin)[0] is passed


def test_summary_share_above_threshold():
    s = summarize([0.9, 0.5, 0.8, 0.7], [1.0, 0.0, None, 0.5], 0.75)
    assert s.share_above_threshold == 0.5 and s.n == 4
    assert s.fact_coverage_mean == pytest.approx(0.5)


def test_pick_eval_round_robins_documents():
    items = [("a", 0)] * 10 + [("b", 0)] * 2 + [("c", 0)] * 1
    picked = pick_eval(items, 5)
    docs = [items[i][0] for i in picked]
    assert len(picked) == 5 and set(docs) == {"a", "b", "c"}


@pytest.mark.parametrize("title,short", [
    ("Annual Leave Policy — London Office", "Annual Leave Policy"),
    ("Family Leave Policy (UK) – Northwind Lattice Ltd.", "Family Leave Policy"),
    ("北風格子股份有限公司 病假及生理假作業要點(台北辦公室)", "病假及生理假作業要點"),
    ("混合辦公(遠距工作)實施要點 - 台北辦公室", "混合辦公實施要點"),
    ("Hybrid Working Policy (UK)", "Hybrid Working Policy"),
])
def test_short_title(title, short):
    from kb_core.ft_data import short_title

    assert short_title(title) == short


def test_distractors_come_from_other_families_and_follow_the_relevant_passage():
    ex = [x for d in corpus(6) for x in build_examples(d, S)]
    out = with_distractors(ex, ex, 1)
    for x, y in zip(ex, out):
        user = y.messages[1]["content"]
        assert user.index(f"[1] (source: {x.doc_id})") < user.index("[2] (source: ")
        lender = user.split("[2] (source: ")[1].split(")")[0]
        assert lender != x.doc_id and y.messages[2] == x.messages[2]
        assert y.example_id != x.example_id
    assert with_distractors(ex, ex, 1) == out  # deterministic
    assert with_distractors(ex, ex, 0) == ex


@pytest.mark.parametrize("question,expect", [
    ("Can I carry unused leave into next year?", "You may carry up to five days"),
    ("How do I book leave?", "Book leave in PeopleHub"),
    ("特休可以遞延嗎？", "未休畢之特休得遞延"),
])
def test_focus_passage_starts_at_the_best_matching_sentence(question, expect):
    chunk = ("# Annual Leave\n## 3. Booking\nBook leave in **PeopleHub** early. Managers reply in "
             "3 days.\n## 4. Carrying over\nYou may carry up to five days of unused leave into the "
             "next year. They expire on 31 March.\n四、未休畢之特休得遞延至次年度。")
    assert focus_passage(chunk, question, 30).startswith(expect)
