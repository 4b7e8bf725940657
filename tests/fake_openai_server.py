"""A local stand-in for the OpenAI API (the only allowed stand-in), driven by the real
`openai` SDK through OPENAI_BASE_URL. Implements what the platform calls: files create,
fine_tuning.jobs create / retrieve / cancel / list_events, chat.completions. Like OpenAI it
validates uploaded training files (JSONL chat format, at least 10 examples) and fails the
job with its own error text; it checks the bearer key and records every request."""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MIN_EXAMPLES = 10


class FakeOpenAI:
    def __init__(self, api_key: str, steps_to_finish: int = 2, fail_jobs: str | None = None):
        self.api_key = api_key
        self.steps_to_finish = steps_to_finish  # retrieves before a job finishes
        self.fail_jobs = fail_jobs  # force every job to fail with this message
        self.files: dict[str, dict] = {}
        self.jobs: dict[str, dict] = {}
        self.requests: list[dict] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    # -- API behaviour ---------------------------------------------------------------------
    def _id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids):06d}"

    def upload(self, filename: str, purpose: str, content: bytes) -> dict:
        fid = self._id("file")
        self.files[fid] = {"content": content, "filename": filename}
        return {"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                "filename": filename, "purpose": purpose, "status": "processed"}

    def validate(self, fid: str) -> str | None:
        """OpenAI-style validation of a training file; the error text or None."""
        if fid not in self.files:
            return f"File {fid} not found."
        lines = [ln for ln in self.files[fid]["content"].decode("utf-8").splitlines() if ln.strip()]
        for no, raw in enumerate(lines, start=1):
            try:
                msgs = json.loads(raw)["messages"]
                assert all(m["role"] in ("system", "user", "assistant") and m["content"] for m in msgs)
            except Exception:
                return (f"The job failed due to an invalid training file. Invalid file format. "
                        f"Line {no}, key \"messages\": each line must be a JSON object with a "
                        "list of role/content messages.")
        if len(lines) < MIN_EXAMPLES:
            return (f"The job failed due to an invalid training file. Training file has "
                    f"{len(lines)} example(s), but must have at least {MIN_EXAMPLES} examples.")
        return None

    def create_job(self, body: dict) -> dict:
        jid = self._id("ftjob")
        job = {"id": jid, "object": "fine_tuning.job", "created_at": int(time.time()),
               "model": body["model"], "training_file": body["training_file"],
               "validation_file": body.get("validation_file"), "status": "validating_files",
               "fine_tuned_model": None, "finished_at": None, "error": None,
               "hyperparameters": {"n_epochs": "auto", "batch_size": "auto",
                                   "learning_rate_multiplier": "auto"},
               "organization_id": "org-fake", "result_files": [], "seed": 42,
               "trained_tokens": None, "suffix": body.get("suffix"), "_polls": 0,
               "_events": ["Validating training file"]}
        self.jobs[jid] = job
        return self.public(job)

    def advance(self, jid: str) -> dict:
        job = self.jobs[jid]
        job["_polls"] += 1
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return self.public(job)
        error = self.fail_jobs or self.validate(job["training_file"])
        if error is None and job["validation_file"]:
            error = self.validate(job["validation_file"]) if self.fail_jobs else None
        if error:
            param = "training_file"
            job.update(status="failed", finished_at=int(time.time()),
                       error={"code": "invalid_training_file", "message": error, "param": param})
            job["_events"].append(error)
        elif job["_polls"] >= self.steps_to_finish:
            base = job["model"].split(":")[1] if job["model"].startswith("ft:") else job["model"]
            job.update(status="succeeded", finished_at=int(time.time()), trained_tokens=12345,
                       fine_tuned_model=f"ft:{base}:org-fake:{job['suffix'] or 'model'}:{jid[-6:]}")
            job["_events"].append("The job has successfully completed")
        else:
            job["status"] = "running"
            job["_events"].append("Step 1/10: training loss=1.23")
        return self.public(job)

    @staticmethod
    def public(job: dict) -> dict:
        return {k: v for k, v in job.items() if not k.startswith("_")}

    def chat(self, body: dict) -> dict:
        """Fine-tuned models answer like the examples they were given (the uploaded answer for
        the same prompt), else in the house style (first context sentence + source); base
        models answer vaguely: enough for the evaluation gate to have a signal."""
        user = next((m["content"] for m in body["messages"] if m["role"] == "user"), "")
        q = re.match(r"Write (\d+) short questions .*? of '([^']+)' answers\..*?\n\n(\S+ \S+ \S+)", user, re.S)
        if q:  # question generation for the dataset (question_source=llm)
            n, title, words = int(q.group(1)), q.group(2), q.group(3)
            text = "\n".join(f"{i + 1}. What does the {title} mean by '{words}' (variant {i + 1})?"
                             for i in range(n))
            return self._chat_reply(body, text)
        learned = self._learned(user) if body["model"].startswith("ft:") else None
        if learned is not None:  # a fine-tune that learned its data answers like it
            return self._chat_reply(body, learned)
        m = re.search(r"\[1\] \(source: ([^)]+)\)\n(.*?)(?:\n\n\[2\]|\n\nQuestion:)", user, re.S)
        if body["model"].startswith("ft:") and m:
            lines = [ln.strip("# ") for ln in m.group(2).splitlines() if ln.strip()]
            passage = " ".join(lines[1:] if len(lines) > 1 else lines)  # skip the title line
            first = re.split(r"(?<=[.。!?])\s", passage)[0]
            text = f"{first} (Source: {m.group(1)})"
        else:
            text = "I am not sure; please check the relevant policy documents."
        return self._chat_reply(body, text)

    def _learned(self, user: str) -> str | None:
        """The assistant answer of an uploaded example with this exact prompt (training or
        validation file): the stand-in for a fine-tune that generalises well."""
        for f in self.files.values():
            for raw in f["content"].decode("utf-8", "replace").splitlines():
                try:
                    msgs = json.loads(raw)["messages"]
                except Exception:  # noqa: BLE001 - invalid files are the validator's business
                    continue
                if len(msgs) == 3 and msgs[1].get("content") == user:
                    return msgs[2]["content"]
        return None

    def _chat_reply(self, body: dict, text: str) -> dict:
        return {"id": self._id("chatcmpl"), "object": "chat.completion",
                "created": int(time.time()), "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}}

    # -- HTTP ------------------------------------------------------------------------------
    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, obj: dict):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, code: int, message: str, etype: str, ecode: str | None = None):
                self._send(code, {"error": {"message": message, "type": etype,
                                            "param": None, "code": ecode}})

            def _route(self, method: str):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                with api._lock:
                    api.requests.append({"method": method, "path": self.path,
                                         "authorization": self.headers.get("Authorization"),
                                         # chat bodies, so tests can read the prompts sent
                                         "json": json.loads(body) if "chat" in self.path else None})
                if self.headers.get("Authorization") != f"Bearer {api.api_key}":
                    return self._error(401, "Incorrect API key provided.",
                                       "invalid_request_error", "invalid_api_key")
                path = self.path.split("?")[0]
                with api._lock:
                    if method == "POST" and path == "/v1/files":
                        return self._send(200, api._multipart_upload(self.headers, body))
                    if method == "POST" and path == "/v1/fine_tuning/jobs":
                        req = json.loads(body)
                        if req.get("training_file") not in api.files:
                            return self._error(400, f"invalid training_file: {req.get('training_file')}",
                                               "invalid_request_error", "invalid_file")
                        return self._send(200, api.create_job(req))
                    m = re.fullmatch(r"/v1/fine_tuning/jobs/([\w-]+)(/cancel|/events)?", path)
                    if m and m.group(1) in api.jobs:
                        jid, tail = m.groups()
                        if tail == "/cancel":
                            api.jobs[jid]["status"] = "cancelled"
                            return self._send(200, api.public(api.jobs[jid]))
                        if tail == "/events":
                            ev = [{"id": f"ev-{i}", "object": "fine_tuning.job.event",
                                   "created_at": 0, "level": "info", "message": msg}
                                  for i, msg in enumerate(api.jobs[jid]["_events"])]
                            return self._send(200, {"object": "list", "data": ev[::-1],
                                                    "has_more": False})
                        return self._send(200, api.advance(jid))
                    if method == "POST" and path == "/v1/chat/completions":
                        return self._send(200, api.chat(json.loads(body)))
                return self._error(404, f"Unknown request URL: {method} {path}",
                                   "invalid_request_error", "unknown_url")

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

        return Handler

    def _multipart_upload(self, headers, body: bytes) -> dict:
        msg = BytesParser().parsebytes(
            f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body)
        fields, filename, content = {}, "upload.jsonl", b""
        for part in msg.get_payload():
            name = part.get_param("name", header="content-disposition")
            if part.get_filename():
                filename, content = part.get_filename(), part.get_payload(decode=True)
            else:
                fields[name] = part.get_payload(decode=True).decode()
        return self.upload(filename, fields.get("purpose", ""), content)
