# Sourced by .ci/run: a throw-away PostgreSQL server on localhost for the multi-worker auto-compression test.
# Installs the Debian packages only when no server binary is there (re-runs are cheap), runs the server as the
# postgres user on a free port with a temporary data directory, exports NNIC_TEST_POSTGRES_URL, and stops the
# server and removes the directory when the calling script exits.
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
if [ -z "$(pg_bin)" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
PG_BIN="$(pg_bin)"
PG_DATA="$(mktemp -d /tmp/nnic-pg.XXXXXX)"
PG_PORT="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
chown postgres "$PG_DATA"
as_postgres() { runuser -u postgres -- "$@"; }
as_postgres "$PG_BIN/initdb" -D "$PG_DATA" -A trust -U postgres >/dev/null
as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -o "-p $PG_PORT -k $PG_DATA -c listen_addresses=127.0.0.1" \
    -l "$PG_DATA/server.log" -w start >/dev/null
stop_postgres() {
    as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$PG_DATA"
}
trap stop_postgres EXIT
as_postgres "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres nnic_test
export NNIC_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:$PG_PORT/nnic_test"
