"""Loaded at start-up by the processes the crash-safety tests launch (their PYTHONPATH puts
this folder first). With KB_FAULT_POINT=<name> set, the process writes KB_FAULT_MARKER (if
set) and waits at that point until the test kills it."""

import os

if os.environ.get("KB_FAULT_POINT"):
    import time

    from kb_core.hooks import POINTS, set_fault_hook

    def _stop_at(name: str) -> None:
        if os.environ.get("KB_FAULT_POINT") != name:
            return
        marker = os.environ.get("KB_FAULT_MARKER")
        if marker:
            with open(marker, "w") as f:
                f.write(name)
        while True:  # wait to be killed
            time.sleep(1)

    assert os.environ["KB_FAULT_POINT"] in POINTS, os.environ["KB_FAULT_POINT"]
    set_fault_hook(_stop_at)
