"""Remote fine-tuning jobs survive a crash: the job id is recorded (atomically) right after
the job is created, before hours of polling, and a re-run with the same inputs resumes it."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class JobRecord:
    """The id of the remote job training one set of inputs, in `<state_dir>/<key>.json`.
    The key hashes the training and validation files and the settings, so a changed dataset
    or setting never resumes a job trained on something else."""

    path: Path

    @classmethod
    def for_job(cls, job, settings: dict) -> "JobRecord":
        h = hashlib.sha256(json.dumps({"settings": settings, "parent": job.parent},
                                      sort_keys=True).encode())
        for name in (job.train_file, job.eval_file):
            with open(name, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
        root = Path(job.state_dir) if job.state_dir else Path(job.out_dir).parent.parent / "jobs"
        return cls(root / f"openai-{h.hexdigest()[:24]}.json")

    def job_id(self) -> str | None:
        try:
            return json.loads(self.path.read_text("utf-8")).get("job_id") or None
        except (OSError, ValueError):
            return None

    def write(self, job_id: str, status: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"job_id": job_id, "status": status, "recorded_at": time.time()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
