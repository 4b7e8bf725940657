"""The inbox sensor, evaluated with Dagster's build_sensor_context against a real inbox
directory; the pure decision function is exercised directly for the timing edge cases."""

import json
import os
import time

import pytest
from dagster import DefaultScheduleStatus, DefaultSensorStatus, SensorResult, build_sensor_context

from resources.config import KBConfig
from sensors.inbox_sensor import SensorSettings, build_inbox_sensor, daemon_interval
from sensors.inbox_state import InboxCursor, evaluate_inbox, state_hash
from tests.kbtest import write

OLD = 120  # seconds: a file this old has clearly stopped changing


def age(path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def drop(paths, rel: str, content: str, seconds_old: float = OLD):
    p = write(paths, rel, content)
    age(p, seconds_old)
    return p


def evaluate(paths, cursor: str | None) -> SensorResult:
    ctx = build_sensor_context(cursor=cursor,
                               resources={"kb_config": KBConfig(inbox=str(paths.inbox))})
    result = build_inbox_sensor()(ctx)
    assert isinstance(result, SensorResult)
    return result


def runs(result: SensorResult) -> list:
    return list(result.run_requests or [])


def test_new_file_requests_exactly_one_run(kb_paths):
    drop(kb_paths, "leave.md", "# Leave\nTwenty days a year.")
    result = evaluate(kb_paths, None)
    [request] = runs(result)
    assert request.run_key.startswith("inbox-1-")
    assert request.tags["kb/trigger"] == "inbox_sensor"
    assert "+1 added" in request.tags["kb/inbox_changes"]
    cursor = json.loads(result.cursor)
    size, mtime_ns, sha = cursor["files"]["leave.md"]
    assert size == len("# Leave\nTwenty days a year.") and len(sha) == 64 and mtime_ns > 0


def test_empty_inbox_requests_nothing(kb_paths):
    result = evaluate(kb_paths, None)
    assert runs(result) == []
    assert "inbox unchanged (0 files" in result.skip_reason.skip_message


def test_same_state_again_requests_nothing(kb_paths):
    drop(kb_paths, "leave.md", "# Leave\nTwenty days a year.")
    first = evaluate(kb_paths, None)
    second = evaluate(kb_paths, first.cursor)
    assert runs(second) == []
    assert "inbox unchanged" in second.skip_reason.skip_message


def test_growing_file_waits_until_stable(kb_paths, monkeypatch):
    # A settle time beyond the in-tick wait: settling is decided across ticks.
    monkeypatch.setenv("KB_SENSOR_SETTLE_S", "30")
    p = write(kb_paths, "big.txt", "part one ")            # mtime = now: still being written
    r1 = evaluate(kb_paths, None)
    assert runs(r1) == []
    assert "waiting for 1 file(s) to stop changing: big.txt" in r1.skip_reason.skip_message
    assert "big.txt" in json.loads(r1.cursor)["pending"]
    with p.open("a", encoding="utf-8") as f:                # still growing
        f.write("part two ")
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    r2 = evaluate(kb_paths, r1.cursor)
    assert runs(r2) == []
    r3 = evaluate(kb_paths, r2.cursor)                      # unchanged since r2: settled
    [request] = runs(r3)
    assert json.loads(r3.cursor)["files"]["big.txt"][0] == len("part one part two ")
    assert json.loads(r3.cursor)["pending"] == {}


def test_young_file_settles_within_one_tick(kb_paths, monkeypatch):
    monkeypatch.setenv("KB_SENSOR_SETTLE_S", "0.5")
    write(kb_paths, "fresh.md", "just copied")              # mtime = now
    t0 = time.monotonic()
    [request] = runs(evaluate(kb_paths, None))              # looked twice, 0.5 s apart
    assert time.monotonic() - t0 >= 0.5


def test_in_tick_wait_is_only_what_the_file_still_needs(kb_paths, monkeypatch):
    monkeypatch.setenv("KB_SENSOR_SETTLE_S", "5")
    drop(kb_paths, "almost.md", "copied 4 s ago", seconds_old=4)
    t0 = time.monotonic()
    [request] = runs(evaluate(kb_paths, None))
    assert 0.9 <= time.monotonic() - t0 < 3                  # ~1 s, not the full 5 s


@pytest.mark.parametrize("wanted, minimum", [(30, 29), (5, 4), (10, 9), (1, 1)])
def test_daemon_interval_gives_the_wanted_cadence(wanted, minimum):
    # The daemon loops every 5 s and measures from the end of the previous tick.
    assert daemon_interval(wanted) == minimum


def test_file_written_during_the_tick_is_not_ingested(kb_paths, monkeypatch):
    import threading

    monkeypatch.setenv("KB_SENSOR_SETTLE_S", "1")
    p = write(kb_paths, "copying.txt", "chunk\n")
    stop = threading.Event()

    def keep_writing():                                     # a slow copy in progress
        while not stop.wait(0.1):
            with p.open("a", encoding="utf-8") as f:
                f.write("chunk\n")

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        result = evaluate(kb_paths, None)
    finally:
        stop.set()
        writer.join()
    assert runs(result) == []
    assert "copying.txt" in json.loads(result.cursor)["pending"]


def test_removed_file_requests_a_run(kb_paths):
    p = drop(kb_paths, "a.md", "alpha")
    drop(kb_paths, "b.md", "beta")
    first = evaluate(kb_paths, None)
    p.unlink()
    second = evaluate(kb_paths, first.cursor)
    [request] = runs(second)
    assert "-1 removed" in request.tags["kb/inbox_changes"]
    assert request.run_key != runs(first)[0].run_key
    assert list(json.loads(second.cursor)["files"]) == ["b.md"]


def test_touched_but_unchanged_file_requests_nothing(kb_paths):
    p = drop(kb_paths, "a.md", "alpha")
    first = evaluate(kb_paths, None)
    age(p, OLD / 2)                                         # new mtime, same bytes
    second = evaluate(kb_paths, first.cursor)
    assert runs(second) == []
    assert "touched but their content is unchanged" in second.skip_reason.skip_message
    # The new mtime is remembered: the next evaluation takes the fast path (no re-hash).
    assert json.loads(second.cursor)["files"]["a.md"][1] == p.stat().st_mtime_ns


def test_changed_content_with_same_size_and_mtime_order_is_a_change(kb_paths):
    p = drop(kb_paths, "a.md", "alpha")
    first = evaluate(kb_paths, None)
    p.write_text("ALPHA", encoding="utf-8")                 # same size, new bytes
    age(p, OLD / 2)
    [request] = runs(evaluate(kb_paths, first.cursor))
    assert "~1 changed" in request.tags["kb/inbox_changes"]


def test_cursor_round_trip_does_not_repeat(kb_paths):
    drop(kb_paths, "a.md", "alpha")
    first = evaluate(kb_paths, None)
    saved = first.cursor                                    # what the daemon stores
    cursor = InboxCursor.loads(saved)
    assert InboxCursor.loads(cursor.dumps()) == cursor
    # A restarted sensor (new context) with the stored cursor: no second run.
    assert runs(evaluate(kb_paths, saved)) == []
    # If the daemon died before storing the new cursor, the old cursor gives the SAME
    # run key again, which Dagster dedupes: no repeat either way.
    again = evaluate(kb_paths, None)
    assert runs(again)[0].run_key == runs(first)[0].run_key


def test_returning_to_an_earlier_state_is_a_new_run(kb_paths):
    p = drop(kb_paths, "a.md", "alpha")
    r1 = evaluate(kb_paths, None)
    p.unlink()
    r2 = evaluate(kb_paths, r1.cursor)
    drop(kb_paths, "a.md", "alpha")
    r3 = evaluate(kb_paths, r2.cursor)
    keys = [runs(r)[0].run_key for r in (r1, r2, r3)]
    assert len(set(keys)) == 3                              # a state hash alone would dedupe r3
    assert keys[0].split("-")[2] == keys[2].split("-")[2]   # same state, new generation


def test_partial_and_hidden_files_are_ignored(kb_paths):
    drop(kb_paths, "report.md.part", "half a file")
    drop(kb_paths, ".hidden.md", "secret")
    result = evaluate(kb_paths, None)
    assert json.loads(result.cursor)["files"] == {}


def test_unreadable_cursor_starts_fresh(kb_paths):
    drop(kb_paths, "a.md", "alpha")
    for bad in ("not json", '{"v": 99}', '{"v": 1, "files": 3}', "[]"):
        assert InboxCursor.loads(bad) == InboxCursor()
        assert len(runs(evaluate(kb_paths, bad))) == 1


@pytest.mark.parametrize("first_seen_ago, expect_run", [(10, False), (700, True)])
def test_settling_file_holds_back_others_until_max_wait(kb_paths, first_seen_ago, expect_run):
    drop(kb_paths, "done.md", "complete")
    write(kb_paths, "busy.log", "still being written")
    now = time.time()
    start = evaluate_inbox(kb_paths.inbox, InboxCursor(), now - first_seen_ago, settle_s=5)
    assert start.blocking == ["busy.log"] or first_seen_ago > 600
    # busy.log keeps changing; done.md settled long ago.
    (kb_paths.inbox / "busy.log").write_text("still being written, more", encoding="utf-8")
    ev = evaluate_inbox(kb_paths.inbox, start.cursor, now, settle_s=5, max_wait_s=600)
    assert ev.settling == ["busy.log"]
    assert (ev.run_key is not None) == expect_run
    assert "done.md" in ev.cursor.files and "busy.log" not in ev.cursor.files


@pytest.mark.parametrize("seconds_old, settle_s, settled", [
    (0, 5, False), (4, 5, False), (6, 5, True), (0, 0, True)])
def test_settle_time(kb_paths, seconds_old, settle_s, settled):
    drop(kb_paths, "a.md", "alpha", seconds_old=seconds_old)
    ev = evaluate_inbox(kb_paths.inbox, InboxCursor(), time.time(), settle_s=settle_s)
    assert (ev.run_key is not None) == settled


def test_state_hash_depends_on_content_not_stat(kb_paths):
    from sensors.inbox_state import Entry
    a = {"x.md": Entry(5, 1, "aa"), "y.md": Entry(6, 2, "bb")}
    b = {"y.md": Entry(6, 99, "bb"), "x.md": Entry(5, 42, "aa")}
    assert state_hash(a) == state_hash(b)
    assert state_hash(a) != state_hash({"x.md": Entry(5, 1, "ab"), "y.md": a["y.md"]})


@pytest.mark.parametrize("env, message", [
    ({"KB_SENSOR_INTERVAL_S": "soon"}, "KB_SENSOR_INTERVAL_S='soon': expected a number"),
    ({"KB_SENSOR_SETTLE_S": "-1"}, "KB_SENSOR_SETTLE_S='-1': must be at least 0"),
])
def test_bad_settings_name_the_variable(monkeypatch, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        SensorSettings.from_env()


def test_settings_from_env(monkeypatch):
    monkeypatch.setenv("KB_SENSOR_INTERVAL_S", "5")
    monkeypatch.setenv("KB_SENSOR_SETTLE_S", "2.5")
    assert SensorSettings.from_env() == SensorSettings(5, 2.5, 600)
    monkeypatch.delenv("KB_SENSOR_INTERVAL_S")
    assert SensorSettings.from_env().interval_s == 30


def test_definitions_wire_sensor_and_schedule(kb_paths):
    from dagster_project.definitions import build_definitions

    defs = build_definitions(kb_paths)
    repo = defs.get_repository_def()
    sensor = repo.get_sensor_def("inbox_sensor")
    assert sensor.job_name == "kb_job"
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == daemon_interval(SensorSettings.from_env().interval_s)
    schedule = repo.get_schedule_def("nightly_fine_tune")
    assert schedule.job_name == "all_job"
    assert schedule.default_status == DefaultScheduleStatus.STOPPED
    assert repo.get_job("kb_job").tags["kb/writer"] == "true"


def test_schedule_can_be_switched_on_by_env(monkeypatch):
    from sensors.schedules import build_fine_tune_schedule

    monkeypatch.setenv("KB_FT_SCHEDULE", "on")
    monkeypatch.setenv("KB_FT_SCHEDULE_CRON", "30 3 * * 1-5")
    schedule = build_fine_tune_schedule()
    assert schedule.default_status == DefaultScheduleStatus.RUNNING
    assert schedule.cron_schedule == "30 3 * * 1-5"
