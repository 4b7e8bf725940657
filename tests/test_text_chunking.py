"""Pure text functions: normalisation, PII masking, HTML extraction, chunking, BM25, fusion."""

import pytest

from kb_core.chunking import ChunkerConfig, chunk_id, chunk_text
from kb_core.fusion import dense_weight, rrf_fuse
from kb_core.lexical import BM25Index, lexical_tokens
from kb_core.text import content_hash, html_to_text, mask_pii, normalise


@pytest.mark.parametrize("raw, expected", [
    ("a  b\t c", "a b c"),
    ("ｆｕｌｌ　ｗｉｄｔｈ", "full width"),           # NFKC folds full-width forms
    ("zero\u200bwidth\ufeff", "zerowidth"),            # invisible characters dropped
    ("line1\r\n\r\n\r\n\r\nline2", "line1\n\nline2"),  # paragraph breaks kept, capped
    ("ctrl\x07char", "ctrl char"),
])
def test_normalise(raw, expected):
    assert normalise(raw) == expected


def test_content_hash_ignores_cosmetic_differences():
    assert content_hash("Leave  policy\n") == content_hash("\ufeffLeave policy")
    assert content_hash("Leave policy") != content_hash("Leave policies")


@pytest.mark.parametrize("text, label", [
    ("mail jane.doe@example.com now", "EMAIL"),
    ("call +886-2-2345-6789 today", "PHONE"),
    ("手機 0912-345-678", "PHONE"),
    ("London +44 20 7946 0958", "PHONE"),
    ("(02) 2345-6789 ext", "PHONE"),
    ("ID A123456789 on file", "NATIONAL_ID"),
    ("card 4111 1111 1111 1111", "CARD"),
])
def test_mask_pii(text, label):
    masked, counts = mask_pii(text)
    assert f"[{label}]" in masked and counts.get(label) == 1


def test_mask_pii_keeps_extensions_and_amounts():
    text = "Call ext. 4455 or claim up to NT$1,200 within 30 days (2026-11-21, FY 2025-2026)."
    assert mask_pii(text) == (text, {})


def test_html_to_text_drops_script_and_style():
    title, text = html_to_text("<html><head><title>VPN</title><style>p{}</style></head>"
                               "<body><h1>Access</h1><script>alert(1)</script><p>Use MFA.</p></body></html>")
    assert title == "VPN"
    assert "alert" not in text and "p{}" not in text
    assert text.splitlines() == ["Access", "", "Use MFA."] or "Use MFA." in text


@pytest.mark.parametrize("size, overlap", [(20, 0), (20, 5), (50, 10)])
def test_chunks_cover_text_within_size(size, overlap):
    words = [f"w{i}" for i in range(237)]
    text = " ".join(words)
    chunks = list(chunk_text(text, ChunkerConfig(size=size, overlap=overlap)))
    assert all(c.n_tokens <= size for c in chunks)
    seen = [w for c in chunks for w in c.text.split()]
    assert set(seen) == set(words)                       # nothing lost
    assert chunks[-1].text.split()[-1] == "w236"
    if overlap:
        assert chunks[0].text.split()[-overlap:] == chunks[1].text.split()[:overlap]
    else:
        assert len(seen) == len(words)                   # no overlap: no repeats


def test_chunking_is_cjk_aware():
    text = "員工到職滿一年後享有特休假七天。" * 30  # no spaces at all
    chunks = list(chunk_text(text, ChunkerConfig(size=40, overlap=0)))
    assert len(chunks) > 5
    assert all(c.n_tokens <= 40 for c in chunks)
    assert all(c.text.endswith("。") for c in chunks[:-1])  # cut at sentence ends
    assert "".join(c.text for c in chunks) == text


def test_chunker_version_records_settings():
    a, b = ChunkerConfig(size=200, overlap=40), ChunkerConfig(size=120, overlap=40)
    assert a.version != b.version and "size=200" in a.version
    with pytest.raises(ValueError):
        ChunkerConfig(size=4)


def test_chunk_id_is_stable_positive_int64():
    cid = chunk_id("hr/leave.md", 0, "abc")
    assert cid == chunk_id("hr/leave.md", 0, "abc") and 0 < cid < 2**63
    assert cid != chunk_id("hr/leave.md", 1, "abc")


def test_lexical_tokens_cjk_bigrams_and_english_words():
    toks = lexical_tokens("VPN 使用規定: Employees")
    assert "vpn" in toks and "employee" in toks
    assert {"使用", "用規", "規定"} <= set(toks)
    assert "規" in toks


def test_bm25_ranks_matching_document_first():
    idx = BM25Index.build(["特休假規定 員工享有特休假七天", "VPN 連線規定", "expense claims policy"])
    rows, scores = idx.search("特休假有幾天", 3)
    assert rows[0] == 0 and scores[0] > 0
    rows, _ = idx.search("expenses claim", 3)
    assert rows.tolist() == [2]
    assert idx.search("nothing matches here", 3)[0].size == 0


def test_rrf_fuse_weights_and_ties():
    fused = rrf_fuse([[1, 2, 3], [2, 3]], k=60)
    assert [i for i, _ in fused] == [2, 3, 1]
    fused = rrf_fuse([[1, 2], [2, 1]], weights=[0.1, 1.0])
    assert fused[0][0] == 2
    assert rrf_fuse([[5, 6], [6, 5]])[0][0] == 5  # tie: first appearance wins


def test_dense_weight_drops_for_cjk_queries():
    assert dense_weight(0.0) == 1.0 and dense_weight(1.0) == pytest.approx(0.1)


def test_chunks_end_before_headings_in_the_unicode_unit_too():
    text = "\n\n".join(f"## Part {i}\n\n" + "Claims need receipts. " * (4 + i % 3) for i in range(10))
    chunks = list(chunk_text(text, ChunkerConfig(size=40, overlap=0)))
    assert sum(c.text.startswith("## Part") or c.text.startswith("Part") for c in chunks) \
        >= len(chunks) * 0.7
