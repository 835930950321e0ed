#!/usr/bin/env bash
# A restore test at production size against a plain script, on this machine, alternating pairs.
#
# The backup: a `pg_dump -Fc` of a `shop` database made with plain tools (ROWS invoices over
# 10 000 customers, a foreign key, a primary key), put as one object into the S3-compatible test
# server (drillrig/s3, SigV4 on).
#   drillrig: `drillrig run` of a restore test of that object: fetch (list, read the header,
#             download with sha256), a fresh container, `pg_restore --jobs 2 --create`, then
#             amcheck, foreign-keys and a count query, and a fresh write read back. Its RTO.
#   shell:    a plain GET of the same object with object_store (examples/s3_get.rs), `docker run`,
#             poll until psql answers, `docker cp`, `pg_restore --jobs 2 --create`, then the same
#             checks (pg_amcheck --heapallindexed --rootdescend, the orphan count, the count)
#             concurrently. Timed from the GET to the last check.
# Prints both times per pair, the medians and the ratio drillrig / shell (goal <= 1.1), and the
# fetch throughput of both (drillrig's `source.mb_per_s` against the plain GET's; goal >= 0.8).
#
# usage: benches/restore-test-vs-shell.sh [ROWS] [PAIRS]   (default 10000000 and 3; needs docker,
#        jq and the local images)
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
rows=${1:-10000000}
pairs=${2:-3}
command -v jq >/dev/null || { echo "restore-test-vs-shell: needs jq" >&2; exit 2; }
image=drillrig/postgres:15-bookworm
source benches/lib.sh
bench_build s3_get
get=$examples/s3_get
work=$(mktemp -d /var/tmp/drillrig-bench.XXXXXX)
containers=()
cleanup() {
    for c in "${containers[@]}"; do docker rm -f -v "$c" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT
export AWS_ACCESS_KEY_ID=bench-key AWS_SECRET_ACCESS_KEY=bench-secret-$$ AWS_REGION=us-east-1

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
wait_pg() { until docker exec -e PGPASSWORD=bench "$1" psql -h 127.0.0.1 -U postgres -qAt -c 'select 1' >/dev/null 2>&1; do sleep 0.1; done; }

# The S3 server, with the dump as s3://backups/shop/shop.dump.
s3=drillrig-bench-s3-$$
containers+=("$s3")
docker run -d --name "$s3" -p 127.0.0.1:0:9000 drillrig/s3:0.14.1-bookworm \
    --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" /data >/dev/null
endpoint="http://127.0.0.1:$(docker port "$s3" 9000/tcp | head -n1 | sed 's/.*://')"

echo "making the backup: $rows invoices, pg_dump -Fc (plain tools)" >&2
source_pg=drillrig-bench-source-$$
containers+=("$source_pg")
docker run -d --name "$source_pg" -e POSTGRES_PASSWORD=bench "$image" >/dev/null
wait_pg "$source_pg"
docker exec "$source_pg" psql -U postgres -qc 'CREATE DATABASE shop'
docker exec "$source_pg" psql -U postgres -d shop -q -v ON_ERROR_STOP=1 -c "
    CREATE TABLE customer (id int PRIMARY KEY, name text NOT NULL);
    CREATE TABLE invoice (id bigint PRIMARY KEY, customer_id int NOT NULL REFERENCES customer (id),
                          total numeric(12,2) NOT NULL, created_at timestamptz NOT NULL, note text NOT NULL);
    INSERT INTO customer SELECT g, 'customer ' || g FROM generate_series(1, 10000) g;
    INSERT INTO invoice SELECT g, 1 + g % 10000, (g % 100000) / 100.0, now() - g * interval '1 second',
                               md5(g::text) FROM generate_series(1, $rows) g;"
docker exec "$source_pg" psql -U postgres -d shop -qAt -c \
    "SELECT 'table ' || pg_size_pretty(pg_total_relation_size('invoice'))" >&2
docker exec "$source_pg" sh -c 'pg_dump -U postgres -Fc -f /tmp/shop.dump shop'
docker exec "$s3" mkdir -p /data/backups/shop
docker cp -q "$source_pg:/tmp/shop.dump" "$work/shop.dump"
docker rm -f -v "$source_pg" >/dev/null
echo "dump: $(du -h "$work/shop.dump" | cut -f1)" >&2
docker cp -q "$work/shop.dump" "$s3:/data/backups/shop/shop.dump"
rm "$work/shop.dump"

cat >"$work/bench-restore-test.toml" <<EOF
schema = 1
name = "bench-restore-test"

[targets.db]
kind = "postgres"
source = { url = "s3://backups/shop/", endpoint = "$endpoint" }
restore = { from = "latest" }
checks = ["amcheck", "foreign-keys"]
objectives = { rto = "1h", rpo = "1h" }

[[targets.db.queries]]
name = "invoices"
sql = "SELECT count(*) FROM invoice"
expect = "== $rows"
EOF

shell_restore() { # -> prints "MILLISECONDS MB_PER_S"
    local start got bytes get_ms c
    start=$(now_ms)
    read -r bytes get_ms < <("$get" "$endpoint" backups shop/shop.dump "$work/shell.dump")
    c=drillrig-bench-shell-$$
    docker run -d --name "$c" -e POSTGRES_PASSWORD=bench "$image" >/dev/null
    wait_pg "$c"
    docker cp -q "$work/shell.dump" "$c:/tmp/restore.dump"
    rm "$work/shell.dump"
    docker exec "$c" pg_restore -U postgres -d postgres --create --exit-on-error --no-owner \
        --no-privileges --jobs 2 /tmp/restore.dump
    local checks=()
    ( got=$(docker exec "$c" psql -U postgres -d shop -qAt -c 'SELECT count(*) FROM invoice')
      [ "$got" = "$rows" ] || { echo "shell: $got invoices" >&2; exit 1; } ) & checks+=($!)
    ( orphans=$(docker exec "$c" psql -U postgres -d shop -qAt -c \
          'SELECT count(*) FROM invoice i LEFT JOIN customer c ON c.id = i.customer_id WHERE c.id IS NULL')
      [ "$orphans" = 0 ] || { echo "shell: $orphans orphans" >&2; exit 1; } ) & checks+=($!)
    ( docker exec "$c" psql -U postgres -d shop -qc 'CREATE EXTENSION IF NOT EXISTS amcheck'
      docker exec "$c" pg_amcheck -U postgres -d shop --heapallindexed --rootdescend >&2 ) & checks+=($!)
    for pid in "${checks[@]}"; do wait "$pid" || { echo "shell: a check failed" >&2; exit 1; }; done
    got=$(( $(now_ms) - start ))
    docker rm -f -v "$c" >/dev/null
    awk -v ms="$got" -v b="$bytes" -v g="$get_ms" 'BEGIN { printf "%d %.2f\n", ms, b / 1e6 / (g > 0 ? g : 1) * 1000 }'
}

# shell_restore runs in a subshell: its container is known here, for the cleanup.
containers+=("drillrig-bench-shell-$$")
printf '%-5s %12s %12s %14s %14s\n' pair drillrig_ms shell_ms drillrig_MB/s plain_MB/s
for i in $(seq 1 "$pairs"); do
    out=$work/run-$i
    "$bin" run "$work/bench-restore-test.toml" --out "$out" --history none >"$work/log-$i" 2>&1 || {
        echo "drillrig run $i did not pass; see $work/log-$i" >&2; trap - EXIT; exit 1; }
    d_ms=$(jq '.targets[0].rto.achieved_ms' "$out/report.json")
    d_mbs=$(jq '.targets[0].source.mb_per_s' "$out/report.json")
    read -r s_ms s_mbs < <(shell_restore)
    echo "$d_ms" >>"$work/d"; echo "$s_ms" >>"$work/s"; echo "$d_mbs" >>"$work/dm"; echo "$s_mbs" >>"$work/sm"
    printf '%-5s %12s %12s %14s %14s\n' "$i" "$d_ms" "$s_ms" "$d_mbs" "$s_mbs"
    rm -rf "$out"
done
d=$(median <"$work/d"); s=$(median <"$work/s"); dm=$(median <"$work/dm"); sm=$(median <"$work/sm")
printf '%-5s %12s %12s %14s %14s\n' median "$d" "$s" "$dm" "$sm"
awk -v d="$d" -v s="$s" 'BEGIN { printf "restore ratio drillrig / shell: %.3f (goal <= 1.1)\n", d / s }'
awk -v d="$dm" -v s="$sm" 'BEGIN { printf "fetch ratio drillrig / plain GET: %.3f (goal >= 0.8)\n", d / s }'
