#!/usr/bin/env bash
# A throwaway PostgreSQL server for trying cthpo's `--storage postgresql://...` (and for CI).
#
#   scripts/postgres-local.sh start DIR [PORT]   initialise DIR if new, start the server on
#                                                127.0.0.1:PORT (default 55432), create user and
#                                                database `cthpo`, print the storage URL
#   scripts/postgres-local.sh stop DIR           stop it (DIR can then be deleted)
#
# The password is $CTHPO_PG_PASSWORD (default `cthpo`). Run as root, the server runs as the
# `postgres` user (PostgreSQL refuses to run as root). Needs PostgreSQL's server binaries
# (Debian: `apt-get install postgresql`).
set -euo pipefail
command=${1:?usage: $0 start|stop DIR [PORT]}
dir=${2:?usage: $0 start|stop DIR [PORT]}
port=${3:-55432}
password=${CTHPO_PG_PASSWORD:-cthpo}

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    bin=$(dirname "$(command -v initdb || echo /missing/initdb)")
fi
if [ ! -x "$bin/initdb" ]; then
    echo "no PostgreSQL server binaries found (install Debian's postgresql package)" >&2
    exit 1
fi
# Runs a command as the server's user: `postgres` when we are root, else ourselves.
as_server_user() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

case $command in
start)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        pwfile="$dir/pwfile"
        printf '%s\n' "$password" >"$pwfile"
        if [ "$(id -u)" = 0 ]; then chown postgres "$pwfile"; fi
        as_server_user "$bin/initdb" -D "$dir/data" -U cthpo --pwfile="$pwfile" \
            --auth=scram-sha-256 --encoding=UTF8 --locale=C >"$dir/initdb.log"
        rm -f "$pwfile"
    fi
    as_server_user "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200" \
        start >/dev/null
    if ! PGPASSWORD=$password "$bin/psql" -h 127.0.0.1 -p "$port" -U cthpo -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'cthpo'" | grep -q 1; then
        PGPASSWORD=$password "$bin/createdb" -h 127.0.0.1 -p "$port" -U cthpo cthpo
    fi
    echo "postgresql://cthpo:$password@127.0.0.1:$port/cthpo"
    ;;
stop)
    as_server_user "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
*)
    echo "usage: $0 start|stop DIR [PORT]" >&2
    exit 2
    ;;
esac
