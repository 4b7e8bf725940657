"""Loaded at start-up by the processes the crash-safety tests launch (their PYTHONPATH puts
this folder first). With KB_FAULT_POINT=<name> set, the process writes KB_FAULT_MARKER (if
set) and waits at that point until the test kills it, or, with KB_FAULT_RESUME=<file> set,
until that file exists, then goes on (the test changes the world meanwhile: stops a server)."""

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
        resume = os.environ.get("KB_FAULT_RESUME")
        while not (resume and os.path.exists(resume)):  # wait to be killed, or resumed
            time.sleep(0.2)

    assert os.environ["KB_FAULT_POINT"] in POINTS, os.environ["KB_FAULT_POINT"]
    set_fault_hook(_stop_at)
