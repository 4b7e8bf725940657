"""Which KB_HOME a command uses, and how it was found: `KB_HOME` from the environment; else
the nearest folder, from the current one upward, that is a KB home (or a project folder whose
`data/` is one); else `./data` as before. A folder is a KB home when it holds the marker file
`kb init` and `kb build` write, or a `kb.duckdb` (KBs built before the marker existed)."""

from __future__ import annotations

from pathlib import Path

from kb_core import settings

MARKER = ".kb-home"
MARKER_TEXT = ("This folder is a kb-platform KB_HOME. `kb` commands run from here or any "
               "folder below it use it when KB_HOME is not set.\n")


def is_home(folder: Path) -> bool:
    return (folder / MARKER).is_file() or (folder / "kb.duckdb").is_file()


def find_home(env: dict | None = None, cwd: Path | None = None) -> tuple[Path, str]:
    """(KB_HOME, how it was found, in words for error messages)."""
    home = settings.get("KB_HOME", env, default="")
    if home:
        return Path(home).expanduser().resolve(), "from the KB_HOME environment variable"
    start = (cwd or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        for candidate in (folder, folder / "data"):
            if is_home(candidate):
                return candidate, f"found upward from {start}"
    return (start / "data").resolve(), ("the default ./data of the current folder: KB_HOME is "
                                        "not set and no KB home was found upward")


def kb_home() -> Path:
    return find_home()[0]


def describe(home: Path | None = None) -> str:
    """`KB_HOME=<path> (<how it was found>)` for messages; `home` overrides the path when
    the caller already resolved it."""
    found, how = find_home()
    return f"KB_HOME={home or found} ({how})"


def mark_home(home: Path) -> None:
    """Write the marker so commands run from below this folder find it."""
    marker = home / MARKER
    if not marker.exists():
        marker.write_text(MARKER_TEXT, encoding="utf-8")
