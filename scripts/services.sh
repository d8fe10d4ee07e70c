#!/usr/bin/env bash
# Makes sure PostgreSQL, Redis and RabbitMQ answer on 127.0.0.1 at their default ports.
# Running: left alone. Installed but stopped: started. Missing: installed from Debian
# packages (apt-get, as root) and started. Never stops or flushes anything.
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  local port=$1 name=$2 seconds=${3:-60}
  for _ in $(seq "$seconds"); do
    port_open "$port" && return 0
    sleep 1
  done
  log "$name did not open port $port within ${seconds}s"
  return 1
}

apt_updated=""
install_packages() {
  if [ "$(id -u)" != 0 ]; then
    log "need to install $* but not root: install them (apt-get install $*) and re-run"
    exit 1
  fi
  if [ -z "$apt_updated" ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if port_open 5432; then return; fi
  local fresh=""
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    install_packages postgresql
    fresh=1
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  if [ -n "$fresh" ]; then
    # Local development only: trust connections from this machine, as the defaults expect.
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  log "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_port 5432 PostgreSQL
}

ensure_redis() {
  if port_open 6379; then return; fi
  command -v redis-server >/dev/null || install_packages redis-server
  log "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  wait_port 6379 Redis
}

ensure_rabbitmq() {
  if port_open 5672; then return; fi
  command -v rabbitmq-server >/dev/null || install_packages rabbitmq-server
  log "starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_port 5672 RabbitMQ 120
  rabbitmqctl await_startup >/dev/null 2>&1 || true
}

ensure_tools() {
  local missing=()
  command -v curl >/dev/null || missing+=(curl)
  command -v psql >/dev/null || missing+=(postgresql-client)
  # The TLS test makes its certificates with it.
  command -v openssl >/dev/null || missing+=(openssl)
  if [ ${#missing[@]} -gt 0 ]; then install_packages "${missing[@]}"; fi
}

ensure_tools
ensure_postgres
ensure_redis
ensure_rabbitmq
log "PostgreSQL :5432, Redis :6379, RabbitMQ :5672 are up"
