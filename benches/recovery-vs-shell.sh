#!/usr/bin/env bash
# The same PostgreSQL recovery, timed two ways on this machine, alternating:
#   drillrig: the pg-corruption drill, fault to verified (its achieved RTO);
#   shell:    a plain bash recovery with the docker CLI and PostgreSQL's tools only, given the
#             same parallelism drillrig uses: a fresh container, `pg_restore --jobs $(nproc)` of the very
#             dump drillrig restored, then the same row-count (against the dump's manifest),
#             foreign-key and pg_amcheck checks, run concurrently. Timed from `docker run` to the
#             last check: it has no detection phase, and skips what only drillrig does
#             (per-table digests, the ledger, the seed facts, the dump's sha256, a fresh write
#             read back).
# Prints both times per pair, their medians and the ratio drillrig / shell (goal <= 1.0).
#
# usage: benches/recovery-vs-shell.sh [PAIRS]     (default 5; needs docker, jq, the local images)
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
pairs=${1:-5}
command -v jq >/dev/null || { echo "recovery-vs-shell: needs jq" >&2; exit 2; }
image=drillrig/postgres:15-bookworm
cargo build --release --quiet
bin=target/release/drillrig
work=$(mktemp -d /tmp/drillrig-bench.XXXXXX)
container=""
trap '[ -n "$container" ] && docker rm -f "$container" >/dev/null 2>&1; rm -rf "$work"' EXIT

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
psql_in() { docker exec "$container" psql -U postgres -d drill -qAt -v ON_ERROR_STOP=1 -c "$1"; }

shell_recovery() { # DUMP MANIFEST -> prints milliseconds
    local dump=$1 manifest=$2 start
    start=$(now_ms)
    container=drillrig-bench-shell-$$
    docker run -d --name "$container" -e POSTGRES_PASSWORD=bench -e POSTGRES_DB=drill \
        -e POSTGRES_INITDB_ARGS="--data-checksums --wal-segsize=1" "$image" >/dev/null
    # Over TCP: the entrypoint's temporary server (initdb, CREATE DATABASE) listens on the
    # socket only, and a socket poll would race its shutdown.
    until docker exec -e PGPASSWORD=bench "$container" \
        psql -h 127.0.0.1 -U postgres -d drill -qAt -c 'select 1' >/dev/null 2>&1; do
        sleep 0.1
    done
    docker cp -q "$dump" "$container:/tmp/restore.dump"
    docker exec "$container" pg_restore -U postgres -d drill --exit-on-error --no-owner --jobs "$(nproc)" \
        /tmp/restore.dump
    # The checks at once, as drillrig runs them.
    local checks=()
    for table in customers orders; do
        (
            want=$(jq -r ".contents.\"public.$table\".rows // .contents.$table.rows" "$manifest")
            got=$(psql_in "select count(*) from $table")
            [ "$got" = "$want" ] || { echo "shell: $table has $got rows, the dump $want" >&2; exit 1; }
        ) &
        checks+=($!)
    done
    (
        orphans=$(psql_in "select count(*) from orders o left join customers c on c.id = o.customer_id where c.id is null")
        [ "$orphans" = 0 ] || { echo "shell: $orphans orphan orders" >&2; exit 1; }
    ) &
    checks+=($!)
    (
        psql_in "create extension if not exists amcheck"
        docker exec "$container" pg_amcheck -U postgres -d drill --heapallindexed --rootdescend >&2
    ) &
    checks+=($!)
    for pid in "${checks[@]}"; do
        wait "$pid" || { echo "shell: a check failed" >&2; exit 1; }
    done
    local took=$(( $(now_ms) - start ))
    docker rm -f "$container" >/dev/null
    container=""
    echo "$took"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

printf '%-5s %14s %14s\n' pair drillrig_ms shell_ms
: >"$work/drill" ; : >"$work/shell"
for i in $(seq 1 "$pairs"); do
    out=$work/run-$i
    "$bin" run scenarios/pg-corruption.toml --out "$out" >"$work/log-$i" 2>&1 || {
        echo "drillrig run $i did not meet its objectives; see $work/log-$i" >&2; trap - EXIT; exit 1; }
    drill_ms=$(jq '.targets[0].rto.achieved_ms' "$out/report.json")
    id=$(jq '.targets[0].restore.backup_id' "$out/report.json")
    backup=$(printf '%s/backups/pg/%03d-pg-dump' "$out" "$id")
    shell_ms=$(shell_recovery "$backup/drill.dump" "$backup/manifest.json")
    echo "$drill_ms" >>"$work/drill"; echo "$shell_ms" >>"$work/shell"
    printf '%-5s %14s %14s\n' "$i" "$drill_ms" "$shell_ms"
    rm -rf "$out"
done
d=$(median <"$work/drill"); s=$(median <"$work/shell")
printf '%-5s %14s %14s\n' median "$d" "$s"
awk -v d="$d" -v s="$s" 'BEGIN { printf "ratio drillrig / shell: %.3f (goal <= 1.0)\n", d / s }'
