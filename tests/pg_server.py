"""A throwaway PostgreSQL server for tests (the `pg_server` fixture in tests/conftest.py).

Debian's server binaries (`apt-get install postgresql`, see scripts/ensure_postgres.sh) live
in /usr/lib/postgresql/<major>/bin. Each server gets its own temporary folder and a free
port, listens on 127.0.0.1 only (no Unix socket), trusts local connections and skips fsync.
initdb refuses to run as root: as root, the server runs as the `postgres` system user."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.serve_thread import free_port

SUPERUSER = "postgres"
DEFAULT_DB = "dagster"


def find_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<major>/bin holding initdb and pg_ctl, or None."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")
             if (Path(p).parent / "pg_ctl").exists()]
    majors = {d: d.parent.name for d in found}
    found.sort(key=lambda d: int(majors[d]) if majors[d].isdigit() else -1)
    return found[-1] if found else None


class PgServer:
    """Start with `start()`, stop (and remove its folder) with `stop()`."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.root: Path | None = None
        self.port: int | None = None
        self._as_postgres = os.geteuid() == 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, db: str = DEFAULT_DB) -> str:
        """libpq's URL (psycopg2.connect, psql)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{db}"

    def dagster_url(self, db: str = DEFAULT_DB) -> str:
        """The same database as KB_DAGSTER_PG_URL takes it (SQLAlchemy, driver named)."""
        return self.url(db).replace("postgresql://", "postgresql+psycopg2://", 1)

    def _run(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / tool), *args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        # cwd: the server's folder, which the postgres user can enter (the test's may not be).
        out = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True,
                             timeout=timeout)
        if out.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n"
                               f"{out.stdout[-2000:]}{out.stderr[-2000:]}\n{log}")
        return out

    def start(self, attempts: int = 3) -> "PgServer":
        self.root = Path(tempfile.mkdtemp(prefix="kb-pg-"))
        if self._as_postgres:
            shutil.chown(self.root, user="postgres", group="postgres")
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
                  "--encoding=UTF8", "--locale=C", "--no-sync")
        for attempt in range(attempts):  # the free port may be taken before the server binds
            self.port = free_port()
            try:
                self.start_server()
                break
            except RuntimeError:
                if attempt == attempts - 1:
                    self.stop()
                    raise
        self.create_database(DEFAULT_DB)
        return self

    def start_server(self) -> None:
        """Start the server of this folder on self.port (again, after `stop_server`)."""
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} "
                "-c unix_socket_directories='' -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts,
                  "-w", "-t", "60", "start")

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data: `fast` disconnects every client (what a restart
        or failover does to them); `immediate` is a crash (recovery on the next start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, down_s: float = 0.0, mode: str = "fast") -> None:
        """Stop, stay down `down_s` seconds, start again on the same port."""
        import time

        self.stop_server(mode)
        time.sleep(down_s)
        self.start_server()

    def create_database(self, name: str) -> str:
        """A new, empty database on this server; returns its KB_DAGSTER_PG_URL."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, name)
        return self.dagster_url(name)

    def stop(self) -> None:
        if self.root is None:
            return
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
