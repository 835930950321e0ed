#!/usr/bin/env bash
# Restore scaling: the same PostgreSQL drill (benches/scenarios/pg-restore-scaling.toml: a damaged
# heap page, the latest pg_dump restored into a fresh container, then row counts, digests, foreign
# keys and pg_amcheck) at several dataset sizes. Prints the dump size, each recovery phase and the
# achieved RTO per size, so the growth of RTO with data is visible.
#
# usage: benches/restore-scaling.sh [ROWS ...]   (default 10000 100000 1000000; needs docker, jq)
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
command -v jq >/dev/null || { echo "restore-scaling: needs jq" >&2; exit 2; }
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(10000 100000 1000000)
source benches/lib.sh
bench_build
work=$(mktemp -d /tmp/drillrig-scaling.XXXXXX)
trap 'rm -rf "$work"' EXIT

printf '%9s %9s %8s %10s %8s %9s %9s %9s\n' orders dump_MB detect provision fetch restore verify rto
for rows in "${sizes[@]}"; do
    scenario=$work/pg-restore-scaling-$rows.toml
    sed "s/rows = 10000/rows = $rows/" benches/scenarios/pg-restore-scaling.toml >"$scenario"
    out=$work/run-$rows
    "$bin" run "$scenario" --out "$out" --history none >"$work/log-$rows" 2>&1 ||
        { echo "the drill at $rows orders did not meet its objectives; see $work/log-$rows" >&2; trap - EXIT; exit 1; }
    jq -r --arg rows "$rows" '.targets[0] as $t
        | ($t.backups[] | select(.id == $t.restore.backup_id) | .size_bytes / 1e6) as $mb
        | [$rows, ($mb * 10 | round / 10), ($t.rto.phases | .detect, .provision, .fetch, .restore, .verify), $t.rto.achieved_ms]
        | @tsv' "$out/report.json" |
        awk -F'\t' '{ printf "%9s %9s %7.2fs %9.2fs %7.2fs %8.2fs %8.2fs %8.2fs\n", $1, $2, $3/1000, $4/1000, $5/1000, $6/1000, $7/1000, $8/1000 }'
    rm -rf "$out"
done
