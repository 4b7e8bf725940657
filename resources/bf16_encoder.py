"""bfloat16 passage encoder: a TorchScript trace of the model (transformers' SDPA attention),
exported once and cached under the model cache as `bf16/<key>/model.pt`, run under torch's
CPU autocast to bfloat16. On a CPU with AMX-BF16 tiles (Intel Sapphire Rapids and later) the
matrix products run on them: 195 scifact abstracts, 2 threads, 3 alternated rounds on a quiet
machine: 135 texts/s against 42 for ONNX fp32, vectors at cosine >= 0.9999 to fp32's (so it
shares their model id and embedding cache; tests/test_embedder_backends.py). Without AMX,
bfloat16 is emulated and slower than fp32, so `auto` uses it only where the CPU has it.
Loading a cached export imports torch (~0.9 s) but neither transformers nor
sentence-transformers; queries stay on ONNX (one short query: 6.0 ms p50 here vs 6.4 for
ONNX, not worth loading torch for), so only passage backlogs come here (Embedder.for_backlog).
Unlike ONNX's, its floats depend on the thread count (1 vs 2 threads: max |diff| 7e-4, cosine
>= 0.9999): reproducible for a given Embedder.threads, not across them.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from resources.onnx_encoder import (META_FILE, OnnxUnavailable, PooledEncoder, folder_digest,
                                    load_tokenizer, publish_folder, read_layout,
                                    traceable_model)

# Part of the cache key: bumped whenever the traced graph or how it is run changes.
EXPORTER_VERSION = "1"
MODEL_FILE = "model.pt"
_EXPORT_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def cpu_has_amx_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (the `amx_bf16` flag)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    except OSError:
        pass
    return False


def export_key(folder: Path) -> str:
    from importlib.metadata import version

    parts = [folder_digest(str(folder)), "bf16", EXPORTER_VERSION, f"torch{version('torch')}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _trace(layout, out: Path) -> list[str]:
    import torch

    # SDPA, not eager attention (unlike the ONNX graph): torch runs its fused kernel, 3x the
    # eager trace's rate in bfloat16 here.
    module, names, sample = traceable_model(layout, "sdpa")
    # As for the ONNX export: the tracer's warnings are about Python booleans in the masking
    # code, constant for an encoder; tests compare other batch sizes and lengths.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, tuple(sample[n] for n in names))
    torch.jit.save(traced, str(out))
    return names


def export(layout, target: Path) -> Path:
    def build(tmp: Path) -> dict:
        names = _trace(layout, tmp / MODEL_FILE)
        return {"source": str(layout.folder), "backend": "bf16", "inputs": names,
                "max_seq_length": layout.max_seq_length, "exporter_version": EXPORTER_VERSION}

    return publish_folder(target, build)


class Bf16Encoder(PooledEncoder):
    """The cached trace, run under CPU autocast to bfloat16 on `threads` torch threads."""

    def __init__(self, folder: Path, cache_root: Path, threads: int = 2):
        import json

        try:
            import torch
        except ImportError as e:
            raise OnnxUnavailable(f"torch is not installed ({e})") from e
        self.torch = torch
        self.threads = threads
        self.layout = read_layout(folder)
        self.target = cache_root / "bf16" / export_key(folder)
        with _EXPORT_LOCK:
            try:
                export(self.layout, self.target)
            except OnnxUnavailable:
                raise
            except Exception as e:  # noqa: BLE001 - any exporter failure: use another backend
                raise OnnxUnavailable(f"bf16 trace of {folder} failed: "
                                      f"{type(e).__name__}: {e}") from e
        meta = json.loads((self.target / META_FILE).read_text(encoding="utf-8"))
        self.inputs = meta["inputs"]
        self.tokenizer = load_tokenizer(self.layout.transformer_dir, self.layout.max_seq_length)
        self.module = torch.jit.load(str(self.target / MODEL_FILE), map_location="cpu").eval()
        self.dim = int(self._hidden(self.tokenizer(["probe"])).shape[-1])

    def _hidden(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        torch = self.torch
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)  # a process-wide setting: restored below
        try:
            tensors = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.inputs]
            # The profiling executor re-specialises the graph for every new batch shape:
            # 86 texts/s with it, 135 without (same machine, alternated).
            with torch.inference_mode(), torch.jit.optimized_execution(False), \
                    torch.autocast("cpu", dtype=torch.bfloat16):
                return self.module(*tensors).float().numpy()
        finally:
            torch.set_num_threads(before)
