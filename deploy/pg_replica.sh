#!/usr/bin/env bash
# A private PostgreSQL primary and its streaming replica, for trying and testing
# ORDERLY_DATABASE_READ_URL on one machine; or a private primary alone, for runs that crash it.
#
#   deploy/pg_replica.sh start DIR PRIMARY_PORT REPLICA_PORT
#       creates both clusters under DIR (which must not exist or be empty), starts them on
#       127.0.0.1 and prints two lines: `primary=URL` and `replica=URL`
#   deploy/pg_replica.sh start DIR PRIMARY_PORT
#       the same with the primary alone; prints `primary=URL`
#   deploy/pg_replica.sh stop DIR
#       stops what runs (no checkpoint) and removes DIR
#   deploy/pg_replica.sh kill DIR primary|replica
#   deploy/pg_replica.sh restart DIR primary|replica
#       stops one server at once, as a crash would; starts it again on its port
#
# The replica is a `pg_basebackup` of the primary that streams its WAL, as a managed replica
# does. Run as root, the servers run as the `postgres` user. PG_BINDIR overrides where
# initdb, pg_ctl and pg_basebackup are found (default: the newest /usr/lib/postgresql/*/bin,
# else PATH).
set -euo pipefail

usage() {
  echo "usage: $0 start DIR PRIMARY_PORT [REPLICA_PORT] | stop DIR | kill|restart DIR primary|replica" >&2
  exit 2
}

bindir() {
  if [ -n "${PG_BINDIR:-}" ]; then
    echo "$PG_BINDIR"
  elif compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)"
  else
    dirname "$(command -v initdb)"
  fi
}

# Runs a PostgreSQL program as the user owning the clusters (initdb refuses root).
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

configure() { # server, port: the last setting in postgresql.conf wins
  printf "port = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\nfsync = off\nmax_connections = 60\n" \
    "$2" "$DIR" | as_owner tee -a "$DIR/$1/postgresql.conf" >/dev/null
}

start_server() { # server
  as_owner "$BIN/pg_ctl" -D "$DIR/$1" -l "$DIR/$1.log" -w -t 30 start >/dev/null ||
    { cat "$DIR/$1.log" >&2; exit 1; }
}

kill_server() { # server
  if [ -f "$DIR/$1/postmaster.pid" ]; then
    as_owner "$BIN/pg_ctl" -D "$DIR/$1" -m immediate -w stop >/dev/null 2>&1 || true
  fi
}

server_name() {
  case "${1:-}" in
    primary | replica) echo "$1" ;;
    *) usage ;;
  esac
}

command=${1:-}
DIR=${2:-}
[ -n "$command" ] && [ -n "$DIR" ] || usage
BIN=$(bindir)

case "$command" in
  start)
    [ $# -eq 3 ] || [ $# -eq 4 ] || usage
    primary_port=$3 replica_port=${4:-}
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    if [ "$(id -u)" -eq 0 ]; then chown postgres "$DIR"; fi
    as_owner test -w "$DIR" -a -x "$DIR" || { echo "$0: the server user cannot write $DIR" >&2; exit 1; }
    # Trust on 127.0.0.1 only; initdb's pg_hba.conf also admits replication from there.
    as_owner "$BIN/initdb" -D "$DIR/primary" --auth=trust -U postgres >"$DIR/initdb.log" 2>&1 ||
      { cat "$DIR/initdb.log" >&2; exit 1; }
    configure primary "$primary_port"
    start_server primary
    if [ -n "$replica_port" ]; then
      # -R writes standby.signal and primary_conninfo: the copy starts as a streaming replica.
      as_owner "$BIN/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres -D "$DIR/replica" -R -X stream
      configure replica "$replica_port"
      start_server replica
    fi
    echo "primary=postgres://postgres@127.0.0.1:$primary_port/postgres"
    if [ -n "$replica_port" ]; then
      echo "replica=postgres://postgres@127.0.0.1:$replica_port/postgres"
    fi
    ;;
  stop)
    [ $# -eq 2 ] || usage
    kill_server replica
    kill_server primary
    rm -rf "$DIR"
    ;;
  kill)
    [ $# -eq 3 ] || usage
    server=$(server_name "$3")
    kill_server "$server"
    ;;
  restart)
    [ $# -eq 3 ] || usage
    server=$(server_name "$3")
    kill_server "$server"
    start_server "$server"
    ;;
  *)
    usage
    ;;
esac
