"""Named crash points for the crash-safety tests. With KB_FAULT_POINT=<name> set, the process
writes KB_FAULT_MARKER (if set) and stops at that point until it is killed, so a test can
SIGKILL it exactly there. Unset (always, outside those tests) it costs one dict lookup."""

from __future__ import annotations

import os
import time

POINTS = ("embedding:after_first_batch", "publish:before_rename", "publish:after_rename")


def fault_point(name: str) -> None:
    if os.environ.get("KB_FAULT_POINT") != name:
        return
    marker = os.environ.get("KB_FAULT_MARKER")
    if marker:
        with open(marker, "w") as f:
            f.write(name)
    while True:  # wait to be killed
        time.sleep(1)
