#!/usr/bin/env bash
# Removes what test runs that crashed left behind: databases huddle_test_<secs>_*, Redis
# keys ht<secs>_*: and RabbitMQ queues ht<secs>_*, when <secs> (their creation time) is
# over an hour ago, and the TLS tests' temporary directories of over an hour ago. Runs in
# progress are younger and left alone.
set -euo pipefail
now=$(date +%s)
old() { [ $((now - $1)) -gt 3600 ]; }
pg="${HUDDLE_TEST_PG:-postgres://postgres@127.0.0.1:5432}"
for db in $(psql "$pg/postgres" -Atc "SELECT datname FROM pg_database WHERE datname ~ '^huddle_test_[0-9]+_'"); do
  secs=${db#huddle_test_}; secs=${secs%%_*}
  if old "$secs"; then psql "$pg/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true; fi
done
if command -v rabbitmqctl >/dev/null; then
  for queue in $(rabbitmqctl list_queues -q --no-table-headers name 2>/dev/null | grep -E '^ht[0-9]+_' || true); do
    secs=${queue#ht}; secs=${secs%%_*}
    if old "$secs"; then rabbitmqctl delete_queue "$queue" >/dev/null 2>&1 || true; fi
  done
  for exchange in $(rabbitmqctl list_exchanges -q --no-table-headers name 2>/dev/null | grep -E '^ht[0-9]+_' || true); do
    secs=${exchange#ht}; secs=${secs%%_*}
    if old "$secs"; then rabbitmqctl eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$exchange\">>), false, <<\"cleanup\">>)." >/dev/null 2>&1 || true; fi
  done
fi
if command -v redis-cli >/dev/null; then
  redis-cli --scan --pattern 'ht[0-9]*_*' 2>/dev/null | while read -r key; do
    secs=${key#ht}; secs=${secs%%_*}
    case "$secs" in ''|*[!0-9]*) continue ;; esac
    if old "$secs"; then redis-cli del "$key" >/dev/null; fi
  done
fi
# The TLS tests' certificates (kept for the whole test process) and servers' directories.
find "${TMPDIR:-/tmp}" -maxdepth 1 \( -name 'huddle-tls-*' -o -name 'huddle-pg-tls-*' \) -mmin +60 -exec rm -rf {} + 2>/dev/null || true
