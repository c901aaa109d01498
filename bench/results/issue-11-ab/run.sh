#!/bin/bash
# A/B: old vs new balancer, same backends, wrk -t1 -c64, alternating.
set -u
NEW=/work/main/target/release/balancer
OLD=/work/old-target/release/balancer
BK=/work/main/target/release/backend
pids=()
for i in 1 2 3; do $BK --listen 127.0.0.1:1810$i --id b$i >/dev/null 2>&1 & pids+=($!); done
sleep 0.5
cat > /tmp/ab/lb.toml <<T
listen = "127.0.0.1:18200"
backends = [{ addr = "127.0.0.1:18101", agent = "127.0.0.1:1" }, { addr = "127.0.0.1:18102", agent = "127.0.0.1:1" }, { addr = "127.0.0.1:18103", agent = "127.0.0.1:1" }]
[agent]
interval = "1h"
[admin]
listen = "127.0.0.1:18201"
T
tick=$(getconf CLK_TCK)
for round in 1 2 3 4 5; do
  for which in old new; do
    bin=$OLD; [ $which = new ] && bin=$NEW
    $bin --config /tmp/ab/lb.toml --threads 1 >/dev/null 2>&1 & lb=$!
    sleep 1.5
    wrk -t1 -c64 -d2s http://127.0.0.1:18200/ >/dev/null 2>&1
    read -r u0 s0 < <(awk '{print $14, $15}' /proc/$lb/stat)
    out=$(wrk -t1 -c64 -d8s http://127.0.0.1:18200/ 2>&1)
    read -r u1 s1 < <(awk '{print $14, $15}' /proc/$lb/stat)
    kill $lb; wait $lb 2>/dev/null
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    echo "$round $which rps=$rps user_s_per_100k=$(echo "scale=3; ($u1-$u0)/$tick*100000/$reqs" | bc) sys_s_per_100k=$(echo "scale=3; ($s1-$s0)/$tick*100000/$reqs" | bc)"
  done
done
kill ${pids[@]}
