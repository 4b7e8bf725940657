"""Named points where a test may stop the process (crash-safety tests SIGKILL it there).
Production code only names the points; nothing here stops anything unless a test installs
a hook (tests/hooks/sitecustomize.py does, in the processes it starts)."""

from __future__ import annotations

from typing import Callable

POINTS = ("embedding:after_first_batch", "embedding:worker_part_written",
          "publish:segment_written", "publish:before_rename", "publish:after_rename",
          "release:before_register", "registry:before_log_model")
_fault_hook: Callable[[str], None] | None = None


def set_fault_hook(hook: Callable[[str], None] | None) -> None:
    global _fault_hook
    _fault_hook = hook


def fault_point(name: str) -> None:
    if _fault_hook is not None:
        _fault_hook(name)
