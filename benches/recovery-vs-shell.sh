#!/usr/bin/env bash
# The same recovery from a backup, timed two ways on this machine, alternating pairs:
#   drillrig: a drill that restores its latest backup into a fresh container, timed from the
#             restore's start to verified (`restore_started_at_ms` → `recovered_at_ms`: its RTO
#             without the detect phase, which holds the fault itself; the shell has no fault to
#             meet). Its whole RTO, fault to verified, is printed beside it.
#   shell:    a plain bash recovery with the docker CLI and the service's own tools, given the
#             same parallelism drillrig uses, from the very backup drillrig restored, timed from
#             `docker run` to the last check. It skips what only drillrig does (the ledger read
#             back, the seed facts, the backup's sha256, a fresh write read back).
# Kinds:
#   postgres  pg-corruption: a fresh container, `pg_restore --jobs $(nproc)`, then row counts
#             against the dump's manifest, orphan rows and pg_amcheck, concurrently.
#   redis     redis-flushall: the RDB copied into a fresh container before it starts, then
#             redis-check-rdb on it, DBSIZE and DEBUG DIGEST against the backup's manifest,
#             concurrently.
#   rabbitmq  rabbitmq-reset: a fresh node, `rabbitmqctl import_definitions`, every message of
#             the export republished with confirms (examples/republish.rs, which waits for the
#             queues first), then each queue's depth against the manifest and the broker's
#             exported queues, exchanges and bindings against the backup's, concurrently.
# Prints both times per pair, their medians and the ratio drillrig / shell (goal <= 1.0).
#
# usage: benches/recovery-vs-shell.sh [postgres|redis|rabbitmq] [PAIRS]
#        (default postgres, 5 pairs; needs docker, jq, the local images)
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
kind=${1:-postgres}
pairs=${2:-5}
command -v jq >/dev/null || { echo "recovery-vs-shell: needs jq" >&2; exit 2; }
case $kind in
    postgres) scenario=pg-corruption target=pg image=drillrig/postgres:15-bookworm ;;
    redis) scenario=redis-flushall target=cache image=drillrig/redis:7.0-bookworm ;;
    rabbitmq) scenario=rabbitmq-reset target=mq image=drillrig/rabbitmq:3.10-bookworm ;;
    *) echo "recovery-vs-shell: no kind $kind (postgres, redis, rabbitmq)" >&2; exit 2 ;;
esac
source benches/lib.sh
bench_build republish
work=$(mktemp -d /tmp/drillrig-bench.XXXXXX)
container=""
trap '[ -n "$container" ] && docker rm -f "$container" >/dev/null 2>&1; rm -rf "$work"' EXIT

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
fail() { echo "shell: $*" >&2; exit 1; }
# Waits for the background checks; any failure fails the recovery.
wait_all() { local pid; for pid in "$@"; do wait "$pid" || fail "a check failed"; done; }

postgres_recovery() { # BACKUP_DIR
    local dump=$1/drill.dump manifest=$1/manifest.json
    psql_in() { docker exec "$container" psql -U postgres -d drill -qAt -v ON_ERROR_STOP=1 -c "$1"; }
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
    local checks=()
    for table in customers orders; do
        (
            want=$(jq -r ".contents.\"public.$table\".rows // .contents.$table.rows" "$manifest")
            got=$(psql_in "select count(*) from $table")
            [ "$got" = "$want" ] || fail "$table has $got rows, the dump $want"
        ) &
        checks+=($!)
    done
    (
        orphans=$(psql_in "select count(*) from orders o left join customers c on c.id = o.customer_id where c.id is null")
        [ "$orphans" = 0 ] || fail "$orphans orphan orders"
    ) &
    checks+=($!)
    (
        psql_in "create extension if not exists amcheck"
        docker exec "$container" pg_amcheck -U postgres -d drill --heapallindexed --rootdescend >&2
    ) &
    checks+=($!)
    wait_all "${checks[@]}"
}

redis_recovery() { # BACKUP_DIR
    local rdb=$1/dump.rdb manifest=$1/manifest.json
    cli() { docker exec "$container" redis-cli "$@"; }
    docker create --name "$container" "$image" redis-server --appendonly no --save "" \
        --enable-debug-command local >/dev/null
    docker cp -q "$rdb" "$container:/data/dump.rdb"
    docker start "$container" >/dev/null
    # PING answers LOADING until the RDB is in memory.
    until [ "$(cli ping 2>/dev/null)" = PONG ]; do sleep 0.1; done
    local checks=()
    ( docker exec "$container" redis-check-rdb /data/dump.rdb >/dev/null || fail "redis-check-rdb" ) &
    checks+=($!)
    (
        want=$(jq -r '.contents.keyspace.rows' "$manifest"); got=$(cli dbsize)
        [ "$got" = "$want" ] || fail "$got keys, the backup $want"
    ) &
    checks+=($!)
    (
        want=$(jq -r '.contents.keyspace.digest' "$manifest"); got=$(cli debug digest)
        [ "$got" = "$want" ] || fail "digest $got, the backup $want"
    ) &
    checks+=($!)
    wait_all "${checks[@]}"
}

rabbitmq_recovery() { # BACKUP_DIR
    local definitions=$1/definitions.json messages=$1/messages.jsonl manifest=$1/manifest.json
    local vhost port depths
    ctl() { docker exec -u rabbitmq "$container" rabbitmqctl -q "$@"; }
    vhost=$(jq -r '.queues[0].vhost' "$definitions")
    docker run -d --name "$container" -e RABBITMQ_DEFAULT_USER=bench -e RABBITMQ_DEFAULT_PASS=bench \
        -p 127.0.0.1::5672 "$image" >/dev/null
    port=$(docker port "$container" 5672/tcp | head -1 | sed 's/.*://')
    docker cp -q "$definitions" "$container:/tmp/definitions.json"
    # await_startup waits for the broker once its Erlang node runs; before that it fails at once.
    until ctl await_startup 2>/dev/null; do sleep 0.1; done
    ctl import_definitions /tmp/definitions.json >/dev/null
    ctl set_permissions -p "$vhost" bench '.*' '.*' '.*' >/dev/null
    depths=$work/depths
    AMQP_URI="amqp://bench:bench@127.0.0.1:$port/${vhost//\//%2f}" \
        "$examples/republish" "$messages" 120 >"$depths"
    local checks=()
    (
        while read -r queue depth; do
            want=$(jq -r --arg q "$queue" '.contents[$q].rows' "$manifest")
            [ "$depth" = "$want" ] || fail "$queue holds $depth messages, the backup $want"
        done <"$depths"
    ) &
    checks+=($!)
    (
        ctl export_definitions /tmp/now.json >/dev/null
        docker cp -q "$container:/tmp/now.json" "$work/now.json"
        shape='{queues: (.queues | map({name, vhost, durable, arguments}) | sort_by(.name)),
                exchanges: (.exchanges | map({name, vhost, type, durable}) | sort_by(.name)),
                bindings: (.bindings | sort_by(.source, .destination, .routing_key))}'
        [ "$(jq -S "$shape" "$work/now.json")" = "$(jq -S "$shape" "$definitions")" ] \
            || fail "the broker's topology is not the backup's"
    ) &
    checks+=($!)
    wait_all "${checks[@]}"
}

shell_recovery() { # BACKUP_DIR -> prints milliseconds
    local start
    start=$(now_ms)
    container=drillrig-bench-shell-$$
    "${kind}_recovery" "$1"
    local took=$(( $(now_ms) - start ))
    docker rm -f "$container" >/dev/null
    container=""
    echo "$took"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

printf '%-5s %14s %14s %14s\n' pair drillrig_ms shell_ms rto_ms
: >"$work/drill"; : >"$work/shell"; : >"$work/rto"
for i in $(seq 1 "$pairs"); do
    out=$work/run-$i
    "$bin" run "scenarios/$scenario.toml" --out "$out" --history none >"$work/log-$i" 2>&1 || {
        echo "drillrig run $i did not meet its objectives; see $work/log-$i" >&2; trap - EXIT; exit 1; }
    drill_ms=$(jq '.targets[0].rto | .recovered_at_ms - .restore_started_at_ms' "$out/report.json")
    rto_ms=$(jq '.targets[0].rto.achieved_ms' "$out/report.json")
    backup=$(jq -r '.targets[0] | "\(.restore.backup_id)"' "$out/report.json")
    backup=$(ls -d "$out/backups/$target/$(printf '%03d' "$backup")-"*)
    shell_ms=$(shell_recovery "$backup")
    echo "$drill_ms" >>"$work/drill"; echo "$shell_ms" >>"$work/shell"; echo "$rto_ms" >>"$work/rto"
    printf '%-5s %14s %14s %14s\n' "$i" "$drill_ms" "$shell_ms" "$rto_ms"
    rm -rf "$out"
done
d=$(median <"$work/drill"); s=$(median <"$work/shell"); r=$(median <"$work/rto")
printf '%-5s %14s %14s %14s\n' median "$d" "$s" "$r"
awk -v d="$d" -v s="$s" 'BEGIN { printf "ratio drillrig / shell: %.3f (goal <= 1.0)\n", d / s }'
