"""Issue 16: chunks are measured in the embedder's own word pieces, so the model never
truncates one, and chunks_token_bounds counts in the same unit (and catches a mismatch)."""

import random
from pathlib import Path

import pandas as pd
import pytest

from checks.chunk_checks import evaluate
from resources.quality_config import QualityThresholds
from kb_core.chunking import UNICODE, ChunkerConfig, chunk_text
from kb_assets.chunks import chunk_document
from kb_assets.parsing import parse_file
from kb_core.token_units import MAX_WORD_CHARS, ModelTokens
from resources.config import KBConfig
from resources.embedder import Embedder, packaged_model_path

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data" / "inbox"


@pytest.fixture(scope="module")
def tok() -> ModelTokens:
    return Embedder().tokenizer()


def sample_docs():
    for p in sorted(SAMPLES.rglob("*")):
        if p.is_file():
            yield from parse_file(p.relative_to(SAMPLES).as_posix(), p.read_bytes()).docs


def test_tokenizer_is_the_models_and_reads_offline(tok):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(packaged_model_path()), local_files_only=True)
    text = "Employees don't need approval for 3.5 days; 員工享有特休假。 naïve café"
    assert tok.count([text]) == [len(hf(text, add_special_tokens=False)["input_ids"])]
    assert tok.max_tokens == 254  # max_seq_length 256 minus [CLS] and [SEP]
    assert tok.name.startswith("wordpiece-") and tok.name.endswith("-max254")


def test_no_sample_chunk_exceeds_what_the_model_reads(tok):
    """The issue: 16 of 83 sample chunks were longer than 256 word pieces (up to 342)."""
    cfg = KBConfig(inbox="unused").chunker(tok)
    texts = [row[2] for d in sample_docs()
             for row in chunk_document(d.doc_key, d.title, d.text, cfg, tok).rows]
    counts = tok.count(texts)
    assert len(texts) > 50
    assert max(counts) <= cfg.size <= tok.max_tokens
    # The old unit undercounted: measured with it, the same settings give fewer "tokens".
    old = ChunkerConfig()
    old_texts = [row[2] for d in sample_docs()
                 for row in chunk_document(d.doc_key, d.title, d.text, old).rows]
    assert max(tok.count(old_texts)) > tok.max_tokens


def test_stored_count_is_the_models_count(tok):
    cfg = ChunkerConfig(size=40, overlap=8, tokenizer=tok.name)
    text = " ".join(f"Rule {i}: claims over NT$1,200 need a director's approval." for i in range(60))
    chunks = list(chunk_text(text, cfg, tok))
    assert len(chunks) > 5
    assert [c.n_tokens for c in chunks] == tok.count([c.text for c in chunks])
    assert all(c.n_tokens <= 40 for c in chunks)
    assert chunks[-1].text.endswith("approval.")


def test_cjk_is_one_token_per_character_and_cut_at_sentence_ends(tok):
    text = "員工到職滿一年後享有特休假七天。" * 30
    cfg = ChunkerConfig(size=40, overlap=0, tokenizer=tok.name)
    chunks = list(chunk_text(text, cfg, tok))
    assert all(c.n_tokens <= 40 for c in chunks)
    assert all(c.text.endswith("。") for c in chunks[:-1])
    assert "".join(c.text for c in chunks) == text


def test_a_run_without_spaces_is_split_not_swallowed(tok):
    text = "x" * 100_000
    chunks = list(chunk_text(text, ChunkerConfig(size=50, overlap=0, tokenizer=tok.name), tok))
    assert "".join(c.text for c in chunks) == text  # nothing lost
    assert max(len(c.text) for c in chunks) <= 50 * (2 * MAX_WORD_CHARS + 1)
    assert max(tok.count([c.text for c in chunks])) <= 50


def test_a_chunk_cut_inside_a_long_word_is_still_read_as_counted(tok):
    # Found by the fuzz tests: a 100-character piece of a longer word is word-pieced, not [UNK].
    text = "0:0:0::" + "A" * 1000 + " tail"
    chunks = list(chunk_text(text, ChunkerConfig(size=8, overlap=0, tokenizer=tok.name), tok))
    assert max(tok.count([c.text for c in chunks])) <= 8
    assert "".join(c.text for c in chunks).replace(" ", "") == text.replace(" ", "")


def test_the_tokenizer_is_part_of_the_chunker_version(tok):
    a, b = KBConfig(inbox="x").chunker(), KBConfig(inbox="x").chunker(tok)
    assert a.version != b.version and tok.name in b.version
    with pytest.raises(ValueError, match="configured for tokenizer"):
        list(chunk_text("text", b, UNICODE))
    with pytest.raises(ValueError, match="more than the embedder reads"):
        KBConfig(inbox="x", chunk_size=300).chunker(tok)


def chunk_rows(texts: list[str], n_tokens: list[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    chunks = pd.DataFrame({"chunk_id": range(1, len(texts) + 1), "doc_key": "d", "doc_id": "d",
                           "ordinal": range(len(texts)), "n_tokens": n_tokens,
                           "doc_content_hash": "h", "text_chars": [len(t) for t in texts]})
    return chunks, pd.DataFrame({"chunk_id": chunks["chunk_id"], "doc_id": "d", "text": texts})


def bounds(outcomes):
    return next(o for o in outcomes if o.check.name == "chunks_token_bounds")


def test_bounds_check_recounts_with_the_model_and_catches_a_unit_mismatch(tok):
    # A chunk that the old unit called 200 tokens but the model reads as ~300 word pieces.
    rng = random.Random(0)
    text = " ".join(f"re-{rng.randint(1000, 99999)}/x.{rng.choice('abc')}" for _ in range(60))
    assert tok.count([text])[0] > tok.max_tokens
    chunks, new = chunk_rows([text, "short one"], [200, 2])
    empty = pd.DataFrame(columns=["chunk_id", "doc_key", "doc_content_hash", "text_hash", "n_tokens"])
    out = evaluate(chunks, empty, new, QualityThresholds(), 200, True, "no published version yet",
                   tokenizer=tok)
    b = bounds(out)
    assert not b.passed and b.values["max_recounted_tokens"] > 254
    assert b.values["model_max_tokens"] == 254
    # The same chunk re-cut by the model's unit passes.
    cfg = ChunkerConfig(size=200, overlap=0, tokenizer=tok.name)
    pieces = [c.text for c in chunk_text(text, cfg, tok)]
    chunks, new = chunk_rows(pieces, tok.count(pieces))
    assert bounds(evaluate(chunks, empty, new, QualityThresholds(), 200, True, "none",
                           tokenizer=tok)).passed


def test_chunks_end_before_headings(tok):
    _, text = __import__("kb_core.html_extract", fromlist=["x"]).html_to_text(
        "".join(f"<h2>Section {i}</h2><p>" + "Staff may claim travel costs. " * (5 + i % 4)
                + "</p>" for i in range(12)))
    cfg = ChunkerConfig(size=60, overlap=0, tokenizer=tok.name)
    chunks = list(chunk_text(text, cfg, tok))
    starts = [c.text.startswith("## Section") for c in chunks]
    assert sum(starts) >= len(chunks) * 0.7  # most chunks open with their section's heading
