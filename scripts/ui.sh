#!/usr/bin/env bash
# `make ui`: the Dagster UI and the daemon (sensor, schedule, run queue) for this KB_HOME.
# Two processes instead of `dagster dev` (which orphaned its children when signalled):
# Ctrl-C or SIGTERM stops both, then anything they left behind.
#   KB_HOME (default ./data)   KB_UI_PORT (default 3000)   KB_SENSOR_INTERVAL_S (default 30)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# A shell cannot trap a signal it inherited as ignored (nohup, background jobs, some test
# runners ignore SIGINT or SIGTERM): start over with default dispositions, so that the stop
# below always runs.
if [[ -z ${KB_UI_SIGNALS_RESET:-} ]] && trap -p TERM INT | grep -q "''"; then
    export KB_UI_SIGNALS_RESET=1
    exec env --default-signal=TERM,INT bash "$0" "$@"
fi

VENV=${VENV:-.venv}
BIN="$VENV/bin"
HOST=127.0.0.1
PORT=${KB_UI_PORT:-${DAGSTER_PORT:-3000}}
export KB_HOME=${KB_HOME:-$PWD/data}
export DAGSTER_HOME=${DAGSTER_HOME:-$KB_HOME/dagster}
export DAGSTER_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 MLFLOW_DISABLE_TELEMETRY=true

# Create KB_HOME, the inbox and dagster.yaml (telemetry and sign-up prompts off, run queue
# limits); mark runs whose worker died with an earlier UI session as failed, so their
# kb/writer tag stops holding the queue.
"$BIN/python" -m sensors.stale_runs

pids=()
stopping=0

descendants() {  # every live descendant pid of $1, children first listed after parents
    local child
    for child in $(pgrep -P "$1" 2>/dev/null || true); do
        echo "$child"
        descendants "$child"
    done
}

stop() {
    [[ $stopping == 1 ]] && return
    stopping=1
    trap '' INT TERM
    echo "stopping the Dagster webserver and daemon..." >&2
    local tree=() p
    for p in "${pids[@]}"; do
        tree+=("$p" $(descendants "$p"))
    done
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 1 100); do  # up to 20 s for a clean shutdown
        local alive=0
        for p in "${tree[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [[ $alive == 0 ]] && break
        sleep 0.2
    done
    for p in "${tree[@]}"; do  # leftovers (a run worker mid-run, a code server)
        if kill -0 "$p" 2>/dev/null; then
            echo "terminating leftover process $p" >&2
            kill -TERM "$p" 2>/dev/null || true
        fi
    done
    sleep 1
    for p in "${tree[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "stopped" >&2
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM

"$BIN/dagster-webserver" -h "$HOST" -p "$PORT" -w workspace.yaml &
pids+=($!)
"$BIN/dagster-daemon" run -w workspace.yaml &
pids+=($!)
echo "Dagster UI on http://$HOST:$PORT  (KB_HOME=$KB_HOME, DAGSTER_HOME=$DAGSTER_HOME)" >&2
echo "Drop files into ${KB_INBOX:-$KB_HOME/inbox}; Ctrl-C stops both processes." >&2

# Either process exiting on its own ends the session (and stops the other).
set +e
wait -n "${pids[@]}"
status=$?
set -e
echo "a Dagster process exited (status $status)" >&2
stop
exit "$status"
