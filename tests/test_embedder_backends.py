"""The embedder's encoders: ONNX fp32 returns torch's vectors (so both share one cache key),
int8 has a key of its own, the export is cached and atomic, and a missing onnxruntime falls
back to torch with one warning. Real model, real ONNX Runtime, real Dagster runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kb_core import settings
from resources import bf16_encoder
from resources import embedder as embedder_module
from resources.embedder import PACKAGED_MODEL_ID, Embedder, model_cache_root
from resources.onnx_encoder import (META_FILE, MODEL_FILE, FastTokenizer, HFTokenizer,
                                    OnnxUnavailable, read_layout)
from tests.counting_embedder import ENCODED_TEXTS, CountingEmbedder
from tests.kbtest import REPO, materialized, run_job, write

TEXTS = [
    "Employees receive 20 days of paid annual leave each calendar year.",
    "Use the GlobalConnect VPN client with MFA when working outside the office.",
    "What is the effect of vitamin D on bone density in older adults?",
    "員工每年享有二十天特休假，請於系統中提出申請並經主管核准。",
    "專利申請流程：發明人填寫揭露書，法務部門審查後送交專利事務所。",
    "short",
    # Longer than max_seq_length (256 tokens): truncation must match.
    " ".join(["The cohort study followed patients with chronic kidney disease for ten years."] * 40),
]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_onnx_fp32_vectors_equal_torch_and_share_the_cache_key():
    torch_e, onnx_e = Embedder(backend="torch"), Embedder(backend="onnx")
    assert onnx_e.active_backend == "onnx"
    ref, got = torch_e.encode(TEXTS), onnx_e.encode(TEXTS)
    assert got.shape == ref.shape == (len(TEXTS), 384) and got.dtype == np.float32
    assert _cosines(got, ref).min() >= 0.9999
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # one text at a time (batch 1, no padding: another shape than the traced sample)
    single = np.vstack([onnx_e.encode_query(t) for t in TEXTS])
    assert _cosines(single, ref).min() >= 0.9999
    assert onnx_e.model_id == torch_e.model_id == PACKAGED_MODEL_ID
    assert onnx_e.dim == 384 and onnx_e.reads_cjk is torch_e.reads_cjk is False


def test_fast_tokenizer_gives_transformers_ids():
    layout = read_layout(Path(Embedder().resolved_path))
    fast = FastTokenizer(layout.transformer_dir, layout.max_seq_length)
    slow = HFTokenizer(layout.transformer_dir, layout.max_seq_length)
    # Batches of mixed lengths (padding), a text past max_seq_length (truncation), CJK,
    # accents and an empty string.
    for batch in (TEXTS, TEXTS[-1:], ["", "Café résumé naïve", "  spaces\tand\nnewlines "]):
        got, want = fast(batch), slow(batch)
        assert set(got) == set(want) == {"input_ids", "attention_mask", "token_type_ids"}
        for name in got:
            assert got[name].dtype == np.int64
            assert np.array_equal(got[name], want[name]), name
    assert fast(TEXTS)["input_ids"].shape[1] == layout.max_seq_length
    probe = "請假規定 annual leave"
    assert fast(probe, add_special_tokens=False)["input_ids"] == \
        slow.tokenizer(probe, add_special_tokens=False)["input_ids"]
    assert fast.unk_token_id == slow.unk_token_id == slow.tokenizer.unk_token_id


LIGHT_IMPORTS = """
import sys
from pathlib import Path
from resources.embedder import Embedder
e = Embedder(backend="onnx")
assert e.active_backend == "onnx", e.active_backend
v = e.encode_query("annual leave policy")
print(sorted(m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules))
"""


def test_onnx_embedding_imports_neither_torch_nor_transformers():
    # Importing them costs 6-9 s per process (build, search, serve); a cached export needs neither.
    Embedder(backend="onnx").encode_query("export first, if this machine has no export yet")
    out = subprocess.run([sys.executable, "-c", LIGHT_IMPORTS], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_int8_has_its_own_cache_key_and_close_vectors():
    int8 = Embedder(backend="onnx-int8")
    assert int8.active_backend == "onnx-int8"
    assert int8.model_id == f"{PACKAGED_MODEL_ID}#onnx-int8"
    cos = _cosines(int8.encode(TEXTS), Embedder(backend="torch").encode(TEXTS))
    assert cos.min() < 0.9999  # really different vectors: hence the distinct key
    assert cos.mean() > 0.97  # per-channel MatMul quantisation stays close
    again = Embedder.for_model_id(int8.model_id)
    assert again.requested_backend == "onnx-int8" and again.model_id == int8.model_id


@pytest.mark.parametrize("configured, expected", [
    ("", "onnx"), ("auto", "onnx"), ("torch", "torch"), ("onnx", "onnx"),
    ("onnx-int8", "onnx-int8"), ("ONNX", "onnx"), ("bf16", "bf16")])
def test_backend_setting(monkeypatch, configured, expected):
    monkeypatch.setenv("KB_EMBED_BACKEND", configured)
    assert Embedder().requested_backend == expected


def test_bad_backend_names_the_variable(monkeypatch):
    monkeypatch.setenv("KB_EMBED_BACKEND", "tensorrt")
    with pytest.raises(settings.SettingError, match="KB_EMBED_BACKEND='tensorrt'"):
        Embedder().requested_backend
    with pytest.raises(settings.SettingError, match="Embedder.backend='gpu'"):
        Embedder(backend="gpu").requested_backend


@pytest.mark.parametrize("configured, backlog, torch_min, expected", [
    ("", 2, "3", "onnx"), ("", 3, "3", "torch"), ("auto", 10_000, "3", "torch"),
    ("onnx", 10_000, "3", "onnx"), ("torch", 1, "3", "torch"),
    ("onnx-int8", 10_000, "3", "onnx-int8"),
    ("", 10_000, None, "onnx"), ("auto", 10_000, "0", "onnx")])
def test_a_large_backlog_under_auto_is_encoded_by_torch_when_asked(monkeypatch, configured,
                                                                   backlog, torch_min, expected):
    """Same vectors, same cache key: only how fast they come. Off by default (ONNX measured
    faster here); an explicit backend is never overridden. (On a CPU without AMX-BF16.)"""
    monkeypatch.setattr(bf16_encoder, "cpu_has_amx_bf16", lambda: False)
    monkeypatch.setenv("KB_EMBED_BACKEND", configured)
    if torch_min is None:
        monkeypatch.delenv("KB_EMBED_TORCH_MIN", raising=False)
    else:
        monkeypatch.setenv("KB_EMBED_TORCH_MIN", torch_min)
    embedder = CountingEmbedder(batch_size=32)
    chosen = embedder.for_backlog(backlog)
    assert chosen.requested_backend == expected
    assert chosen.model_id == embedder.model_id and type(chosen) is CountingEmbedder
    assert chosen.batch_size == 32


@pytest.mark.parametrize("configured, amx, backlog, bf16_min, torch_min, expected", [
    ("", True, 64, None, None, "bf16"), ("", True, 63, None, None, "onnx"),
    ("auto", True, 10_000, "0", None, "onnx"), ("auto", True, 10_000, "0", "5", "torch"),
    ("", False, 10_000, None, None, "onnx"), ("", False, 10_000, None, "5", "torch"),
    ("", True, 10_000, "100", "5", "bf16"), ("", True, 50, "100", "5", "torch"),
    ("onnx", True, 10_000, None, None, "onnx"), ("torch", True, 10_000, None, None, "torch"),
    ("onnx-int8", True, 10_000, None, None, "onnx-int8")])
def test_a_large_backlog_under_auto_goes_to_bf16_where_the_cpu_has_it(
        monkeypatch, configured, amx, backlog, bf16_min, torch_min, expected):
    monkeypatch.setattr(bf16_encoder, "cpu_has_amx_bf16", lambda: amx)
    monkeypatch.setenv("KB_EMBED_BACKEND", configured)
    for name, value in (("KB_EMBED_BF16_MIN", bf16_min), ("KB_EMBED_TORCH_MIN", torch_min)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    embedder = CountingEmbedder(batch_size=32)
    chosen = embedder.for_backlog(backlog)
    assert chosen.requested_backend == expected
    assert chosen.model_id == embedder.model_id and type(chosen) is CountingEmbedder


def test_cpu_flags_are_read_from_proc_cpuinfo():
    flags = next((ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")), "")
    assert bf16_encoder.cpu_has_amx_bf16() == ("amx_bf16" in flags.split())


def test_bf16_vectors_match_fp32_share_the_cache_key_and_do_not_depend_on_the_batch():
    """Run on any CPU (without AMX-BF16 torch emulates bfloat16: slower, same numbers)."""
    bf16, torch_e = Embedder(backend="bf16"), Embedder(backend="torch")
    assert bf16.active_backend == "bf16"
    ref, got = torch_e.encode(TEXTS), bf16.encode(TEXTS)
    assert got.shape == ref.shape == (len(TEXTS), 384) and got.dtype == np.float32
    cos = _cosines(got, ref)
    assert cos.min() >= 0.9999, cos
    assert cos.min() < 1.0 - 1e-7  # really bfloat16 arithmetic, not fp32 by accident
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # each text alone (batch 1, no padding) against the padded batch of all of them
    single = np.vstack([bf16.encode([t]) for t in TEXTS])
    assert _cosines(single, got).min() >= 0.9999
    assert bf16.model_id == torch_e.model_id == PACKAGED_MODEL_ID
    assert bf16.dim == 384 and bf16.reads_cjk is False
    # the trace is cached beside the ONNX exports, complete (metadata written last)
    entries = list((model_cache_root() / "bf16").iterdir())
    assert any((e / META_FILE).is_file() and (e / "model.pt").is_file() for e in entries)


BF16_IMPORTS = """
import sys
from resources.embedder import Embedder
e = Embedder(backend="bf16")
assert e.active_backend == "bf16", e.active_backend
v = e.encode(["annual leave policy", "a second passage"])
print(sorted(m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules))
"""


def test_a_cached_bf16_trace_loads_without_transformers():
    Embedder(backend="bf16").encode(["trace first, if this machine has no trace yet"])
    out = subprocess.run([sys.executable, "-c", BF16_IMPORTS], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "['torch']"


def test_a_failed_bf16_trace_falls_back_to_onnx_with_one_warning(tmp_path, monkeypatch, caplog):
    def broken(layout, out):
        raise RuntimeError("tracer exploded")

    monkeypatch.setenv("KB_MODEL_CACHE", str(tmp_path))
    monkeypatch.setattr(bf16_encoder, "_trace", broken)
    embedder_module._load_bf16.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="kb.embedder"):
            e = Embedder(backend="bf16")
            assert e.active_backend == "onnx"
            assert e.encode(["annual leave"]).shape == (1, 384)
            assert e.model_id == PACKAGED_MODEL_ID
        warned = [r.getMessage() for r in caplog.records if "bf16 backend unavailable" in r.message]
        assert len(warned) == 1 and "tracer exploded" in warned[0], warned
        assert not [p for p in (tmp_path / "bf16").iterdir()]  # no half-written trace left
    finally:
        embedder_module._load_bf16.cache_clear()


def test_a_version_built_without_int8_reloads_without_int8(monkeypatch):
    monkeypatch.setenv("KB_EMBED_BACKEND", "onnx-int8")
    assert Embedder.for_model_id(PACKAGED_MODEL_ID).model_id == PACKAGED_MODEL_ID
    assert Embedder.for_model_id(None).model_id == PACKAGED_MODEL_ID
    assert Embedder.for_model_id("/models/mine").model_path == "/models/mine"


def test_model_cache_defaults_to_kb_home(kb_paths, monkeypatch):
    monkeypatch.delenv("KB_MODEL_CACHE")
    assert model_cache_root() == kb_paths.home / "models"
    monkeypatch.setenv("KB_MODEL_CACHE", str(kb_paths.home / "shared"))
    assert model_cache_root() == kb_paths.home / "shared"


@pytest.mark.parametrize("modules, pooling, error", [
    ([{"type": "sentence_transformers.models.Transformer", "path": ""},
      {"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"}],
     {"pooling_mode_cls_token": True}, "only mean pooling"),
    ([{"type": "sentence_transformers.models.Transformer", "path": ""},
      {"type": "sentence_transformers.models.Dense", "path": "1_Dense"}], None, "modules"),
])
def test_unsupported_layouts_are_refused_by_file(tmp_path, modules, pooling, error):
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    if pooling:
        (tmp_path / "1_Pooling").mkdir()
        (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    with pytest.raises(OnnxUnavailable, match=error) as info:
        read_layout(tmp_path)
    assert str(tmp_path) in str(info.value)


EXPORT = """
import json, sys
from resources.embedder import Embedder
e = Embedder(backend="onnx")
print(json.dumps({"backend": e.active_backend, "vector": e.encode_query("annual leave").tolist()}))
"""


def test_export_is_atomic_under_concurrency_and_cached(tmp_path, monkeypatch):
    """Two processes export into one empty cache at once: one complete folder, no leftovers,
    equal vectors; a later Embedder loads it without exporting again (same mtime)."""
    cache = tmp_path / "models"
    env = {**os.environ, "PYTHONPATH": str(REPO), "KB_MODEL_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", EXPORT], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert [r["backend"] for r in results] == ["onnx", "onnx"]
    assert np.allclose(results[0]["vector"], results[1]["vector"], atol=1e-6)
    entries = list((cache / "onnx").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith("."), entries
    model_file = entries[0] / MODEL_FILE
    assert (entries[0] / META_FILE).is_file()
    mtime = model_file.stat().st_mtime_ns

    monkeypatch.setenv("KB_MODEL_CACHE", str(cache))
    embedder_module._load_onnx.cache_clear()  # a new process's view: nothing loaded yet
    e = Embedder(backend="onnx")
    assert e.active_backend == "onnx"
    assert np.allclose(e.encode_query("annual leave"), results[0]["vector"], atol=1e-5)
    assert model_file.stat().st_mtime_ns == mtime and list((cache / "onnx").iterdir()) == entries


FALLBACK = """
import sys
from pathlib import Path
sys.modules["onnxruntime"] = None  # this process has no ONNX Runtime: the import fails
from resources.embedder import Embedder
e = Embedder(backend=sys.argv[1])
print(e.active_backend, e.model_id, e.encode(["annual leave"]).shape)
print(e.active_backend, e.model_id, e.encode(["sick leave"]).shape)
"""


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_missing_onnxruntime_falls_back_to_torch_with_one_warning(tmp_path, backend):
    env = {**os.environ, "PYTHONPATH": str(REPO), "KB_MODEL_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", FALLBACK, backend], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines == [f"torch {PACKAGED_MODEL_ID} (1, 384)"] * 2  # torch's key, not #onnx-int8
    warnings = [ln for ln in out.stderr.splitlines() if "using torch instead" in ln]
    assert len(warnings) == 1 and "onnxruntime is not installed" in warnings[0], out.stderr
    assert not (tmp_path / "onnx").exists()


def _build(paths, embedder):
    result = run_job(paths, "index_job", embedder=embedder)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return materialized(result)


def test_a_kb_built_with_torch_keeps_its_cache_hits_under_the_default(kb_paths, monkeypatch):
    monkeypatch.delenv("KB_EMBED_BACKEND", raising=False)
    write(kb_paths, "leave.md", "# Annual Leave\n\nEmployees receive 20 days of paid leave.")
    write(kb_paths, "vpn.md", "# VPN\n\nUse the VPN client with MFA outside the office.")
    ENCODED_TEXTS.clear()
    first = _build(kb_paths, CountingEmbedder(backend="torch"))
    embedded = ENCODED_TEXTS.get(PACKAGED_MODEL_ID, 0)
    assert embedded > 0

    default = CountingEmbedder()
    assert default.active_backend == "onnx"
    second = _build(kb_paths, default)
    assert first["embeddings"]["encoder_backend"] == "torch"
    assert ENCODED_TEXTS[PACKAGED_MODEL_ID] == embedded  # zero chunks re-embedded
    assert (second["embeddings"]["embedding_model"] == first["embeddings"]["embedding_model"]
            == PACKAGED_MODEL_ID)

    ENCODED_TEXTS.clear()
    third = _build(kb_paths, CountingEmbedder(backend="onnx-int8"))
    assert ENCODED_TEXTS.get(f"{PACKAGED_MODEL_ID}#onnx-int8", 0) == embedded  # own key: all again
    assert third["embeddings"]["embedding_model"] == f"{PACKAGED_MODEL_ID}#onnx-int8"
