# Shared by scripts/chaos and scripts/bench: free ports, waiting, and starting the
# services as background processes with their logs and pid files under "$work".
# Callers set: work (a scratch directory with logs/), bin (where the binaries are), and
# a log function; pin (a CPU list for taskset) is optional.

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Below the kernel's ephemeral range (32768+), so no outgoing connection takes a port
# between choosing it and binding it; never the same port twice.
taken=" "
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))
    case "$taken" in *" $p "*) continue ;; esac
    port_open "$p" || { taken="$taken$p "; echo "$p"; return; }
  done
}

# Sets each named variable to a free port.
free_ports() { # name...
  local name
  for name in "$@"; do
    free_port >"$work/port"
    printf -v "$name" '%s' "$(cat "$work/port")"
    taken="$taken${!name} "
  done
}

wait_for() { # command... : retry for up to 60 s
  for _ in $(seq 120); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  return 1
}

# Starts huddle-<name without digits> with extra environment, pinned to $pin if set,
# and waits until its readiness URL answers.
start() { # name readiness-url env...
  local name=$1 url=$2; shift 2
  local pinning=()
  [ -n "${pin:-}" ] && pinning=(taskset -c "$pin")
  env "$@" "${pinning[@]}" "$bin/huddle-${name%%[0-9]}" >>"$work/logs/$name.log" 2>&1 &
  echo $! >"$work/$name.pid"
  disown $!
  wait_for curl -fsS "$url" || { log "$name did not become ready"; tail -n 20 "$work/logs/$name.log" >&2; return 1; }
}

kill9() {
  local pid; pid=$(cat "$work/$1.pid")
  kill -9 "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}
