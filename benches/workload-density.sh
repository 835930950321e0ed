#!/usr/bin/env bash
# Workload density: acknowledged writes per second of drillrig's writer at `rate = 0` (as fast as
# it can, ledger on), against a plain client doing a comparable write on the same container,
# through the same published port on 127.0.0.1:
#   postgres  pgbench, one client, prepared, one INSERT INTO orders per transaction;
#   redis     redis-benchmark, one client, EVAL doing SET + RPUSH (drillrig: MULTI SET RPUSH EXEC);
#   rabbitmq  examples/confirmed_publish.rs, publish one persistent message, wait for its confirm.
# A pair: drillrig runs benches/scenarios/<kind>-density.toml with DRILLRIG_KEEP=always, then the
# baseline runs against the very container drillrig drove, logging in with the run's
# connections.json, and `drillrig gc RUN_ID` removes that run. Pairs
# repeat (drill, baseline, drill, baseline, ...) so slow spells of the disk or CPU fall on both.
# Prints every pair, then per kind the medians of both rates, the ratio of those medians and the
# median of the pairs' ratios, drillrig / baseline (goal >= 0.8).
#
# usage: benches/workload-density.sh [-n PAIRS] [-s SECONDS] [postgres|redis|rabbitmq ...]
#        (default 5 pairs of every kind, 10 s each side; needs docker, jq)
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
command -v jq >/dev/null || { echo "workload-density: needs jq" >&2; exit 2; }
pairs=5 seconds=10
while [ $# -gt 0 ]; do
    case $1 in
    -n) pairs=$2; shift 2 ;;
    -s) seconds=$2; shift 2 ;;
    *) break ;;
    esac
done
kinds=("$@"); [ ${#kinds[@]} -gt 0 ] || kinds=(postgres redis rabbitmq)
source benches/lib.sh
bench_build confirmed_publish
work=$(mktemp -d /tmp/drillrig-density.XXXXXX)
run_id=""
trap '[ -z "$run_id" ] || "$bin" gc "$run_id" >/dev/null 2>&1; rm -rf "$work"' EXIT

# Runs a client tool in a throwaway container on the host's network, so it reaches the service
# through the same published port (and docker-proxy) as drillrig's writer does.
client() { # CONTAINER ARGS... (the image of CONTAINER provides the tool)
    local image
    image=$(docker inspect -f '{{.Config.Image}}' "$1"); shift
    docker run --rm -i --network host --entrypoint "$1" "$image" "${@:2}"
}
baseline() { # KIND CONNECTIONS_JSON -> writes per second
    local c port pass
    # The one target of the run: its container, published port and password.
    c=$(jq -r '.targets[] | .container' "$2")
    port=$(jq -r '.targets[] | .port' "$2")
    pass=$(jq -r '.targets[] | .password' "$2")
    case $1 in
    postgres)
        docker exec -u postgres "$c" psql -d drill -qAt -c "create sequence bench_seq start 1000000000" >/dev/null
        echo "INSERT INTO orders (customer_id, amount_cents, status, seq) VALUES (1 + :client_id, 100, 'new', nextval('bench_seq'));" |
            client "$c" sh -c "cat > /tmp/insert.sql && PGPASSWORD='$pass' pgbench -n -M prepared -c 1 -T $seconds -f /tmp/insert.sql -h 127.0.0.1 -p $port -U postgres drill" |
            awk '/^tps = / { print $3 }'
        ;;
    redis)
        # redis-benchmark runs for a number of requests, not seconds: about 5000 a second here.
        client "$c" redis-benchmark -h 127.0.0.1 -p "$port" -a "$pass" -c 1 -n $((seconds * 5000)) -r 100000000 --csv \
            EVAL "redis.call('SET', KEYS[1], ARGV[1]) return redis.call('RPUSH', 'bench:ledger', ARGV[1])" \
            1 bench:__rand_int__ __rand_int__ | tail -1 | awk -F'","' '{ print $2 }'
        ;;
    rabbitmq)
        # drillrig published into queues holding the seed's messages; after its verify they hold
        # everything it wrote too, and the broker is still settling the messages the verify
        # browsed. A short discarded run waits that out, then both queues are purged, so the
        # baseline publishes into queues no deeper than drillrig's were (if anything, shallower:
        # the comparison favours the baseline).
        AMQP_URI=$(jq -r '.targets[] | .url' "$2")
        export AMQP_URI
        "$examples/confirmed_publish" orders order.bench 2 >/dev/null
        for q in orders.quorum orders.classic; do
            docker exec "$c" rabbitmqctl -q purge_queue -p drill "$q" >/dev/null
        done
        "$examples/confirmed_publish" orders order.bench "$seconds"
        ;;
    esac
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

printf '%-9s %4s %16s %16s %8s\n' target pair drillrig_ok_per_s baseline_per_s ratio
for kind in "${kinds[@]}"; do
    case $kind in postgres) s=pg ;; *) s=$kind ;; esac
    : >"$work/$kind.pairs"
    for pair in $(seq 1 "$pairs"); do
        out=$work/$kind-$pair
        scenario=$work/$s-density.toml
        sed "s/^duration = .*/duration = \"${seconds}s\"/" "benches/scenarios/$s-density.toml" >"$scenario"
        DRILLRIG_KEEP=always "$bin" run "$scenario" --out "$out" --history none >"$out.log" 2>&1 || {
            echo "the $kind drill failed; see $out.log" >&2
            run_id=$(jq -r .run_id "$out/report.json" 2>/dev/null || true); trap - EXIT
            [ -z "$run_id" ] || "$bin" gc "$run_id" >/dev/null 2>&1; exit 1; }
        drill=$(jq '.targets[0].workload | .ok / ((.stopped_ms - .started_ms) / 1000)' "$out/report.json")
        run_id=$(jq -r .run_id "$out/report.json")
        base=$(baseline "$kind" "$out/connections.json")
        "$bin" gc "$run_id" >/dev/null
        run_id=""
        echo "$drill $base" >>"$work/$kind.pairs"
        awk -v k="$kind" -v p="$pair" -v d="$drill" -v b="$base" 'BEGIN { printf "%-9s %4d %16.0f %16.0f %8.3f\n", k, p, d, b, d / b }'
    done
done
echo
printf '%-9s %6s %16s %16s %17s %17s\n' target pairs median_drillrig median_baseline ratio_of_medians median_of_ratios
for kind in "${kinds[@]}"; do
    d=$(awk '{ print $1 }' "$work/$kind.pairs" | median)
    b=$(awk '{ print $2 }' "$work/$kind.pairs" | median)
    r=$(awk '{ print $1 / $2 }' "$work/$kind.pairs" | median)
    awk -v k="$kind" -v n="$pairs" -v d="$d" -v b="$b" -v r="$r" \
        'BEGIN { printf "%-9s %6d %16.0f %16.0f %17.3f %17.3f\n", k, n, d, b, d / b, r }'
done
