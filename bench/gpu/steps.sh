#!/usr/bin/env bash
# The GPU-machine measurements of docs/performance.md, in the order they were run.
# Each step is one `run` command (after `source bench/gpu/setup.sh`):
#   bash bench/gpu/steps.sh N
# Run on an nvidia-h200 (2026-11-21); results: docs/performance.md.
# Steps 1-4 also carry one part of onnxruntime-gpu each (see setup.sh); 5+ need all of it.
set -u
OUT=${OUT:-/tmp/out}
step=$1
py() { python3 "$@"; }
vid() { python3 -m voiceid "$@"; }
# voiceid bench streams over the daemon's worker processes (12 workers, 3 client processes,
# staggered, 100 ms chunks, max_batch 512): pool_json OUT.json [more bench args]
pool_json() {
  local out=$1; shift
  timeout 290 python3 -m voiceid bench streams --workers 12 --client-procs 3 --stagger \
    --chunk-ms 100 --max-batch 512 --duration 12 --audio "$AUDIO" --json "$@" > "$out"
  python3 - "$out" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["runs"]:
    keys = ("mode", "streams", "windows_per_s", "delivered", "skipped_hops", "mean_batch",
            "p50_ms", "p99_ms", "max_ms", "max_lag_ms", "cpu_per_wall", "gpu_util", "holds")
    print({k: r.get(k) for k in keys}, r["extra"])
PY
}
case $step in
1)
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  nproc; free -g | head -2; python3 -V
  python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))'
  ldconfig -p | grep -i -E 'nvinfer|libcudnn.so' | head -5; python3 -m pip show tensorrt 2>&1 | head -2
  python3 -c 'import voiceid.benchmarks.streams, voiceid.sources.websocket, voiceid.cli, pynvml; print("imports ok")'
  timeout 400 python3 bench/gpu/torch_ref.py --compile --out "$OUT/torch.jsonl"
  ;;
2)
  timeout 560 python3 bench/gpu/torch_ref.py --skip-eager --compile 512 128 --compile-budget 240 --out "$OUT/torch.jsonl"
  ;;
3)
  timeout 560 python3 bench/gpu/torch_ref.py --skip-eager --compile 32 1 --compile-budget 200 --out "$OUT/torch.jsonl"
  ;;
4)
  for c in 20 100; do
    timeout 120 python3 bench/gpu/profile_frontend.py --streams 400 --duration 10 --chunk-ms $c --no-profile --audio "$AUDIO" | tail -1
  done
  timeout 200 python3 bench/gpu/profile_frontend.py --streams 400 --duration 10 --top 25 --audio "$AUDIO" | tail -40
  ;;
5)  # (the CUDA-graph rungs 6-9, 11 were re-run after a fix: step 5b)
  timeout 560 python3 bench/gpu/ort_ladder.py --audio "$AUDIO" --out "$OUT/ladder.jsonl"
  ;;
5b)
  timeout 250 python3 bench/gpu/ort_ladder.py --audio "$AUDIO" --rungs 6 7 8 9 11 --out "$OUT/ladder2.jsonl"
  ;;
6)
  timeout 280 python3 -m voiceid bench model --json > "$OUT/model_grid.json"; tail -c 300 "$OUT/model_grid.json"
  python3 - "$OUT/model_grid.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(d["gpu"], d["config"])
for r in d["rows"]:
    print(f'{r["window_s"]:4} {r["batch"]:4} {r["median_ms"]:8.3f} ms {r["windows_per_s"]:9.1f} win/s  dev {r["device_ms"]} ms {r["device_windows_per_s"]} win/s graph={r["cuda_graph"]}')
PY
  timeout 300 python3 -m voiceid bench streams --find-max --start 64 --duration 15 --audio "$AUDIO" --json > "$OUT/streams_inproc.json"
  python3 -c "import json,sys; d=json.load(open('$OUT/streams_inproc.json')); print('largest', d['largest_holding']); [print({k: r[k] for k in ('streams','windows_per_s','delivered','skipped_hops','mean_batch','p50_ms','p99_ms','max_ms','max_lag_ms','cpu_per_wall','gpu_util','holds')}) for r in d['runs']]"
  cp "$OUT/streams_inproc.json" /tmp/streams_inproc.json
  ;;
7)
  timeout 330 python3 -m voiceid bench streams --ws --find-max --start 64 --duration 15 --audio "$AUDIO" --json > "$OUT/streams_ws.json"
  python3 -c "import json,sys; d=json.load(open('$OUT/streams_ws.json')); print('largest', d['largest_holding']); [print({k: r[k] for k in ('streams','windows_per_s','delivered','skipped_hops','mean_batch','p50_ms','p99_ms','max_ms','max_lag_ms','p99_lag_ms','cpu_per_wall','client_cpu_per_wall','gpu_util','holds','extra')}) for r in d['runs']]"
  best=$(python3 -c "import json; print(json.load(open('/tmp/streams_inproc.json'))['largest_holding'] or 200)" 2>/dev/null || echo 200)
  n1=$((best * 14 * 8 / 10)); n2=$((best * 14))
  timeout 250 python3 bench/gpu/sharded.py --procs 14 --streams $n1 $n2 --duration 15 --audio "$AUDIO" --out "$OUT/sharded.jsonl"
  ;;
8)  # more sharded configurations, and in-process with 100 ms chunks
  S="python3 bench/gpu/sharded.py --duration 15 --audio $AUDIO --out $OUT/sharded2.jsonl"
  timeout 110 $S --procs 14 --streams 2100 2800
  timeout 60 $S --procs 14 --streams 3404 --max-batch 128 --max-wait-ms 20
  timeout 60 $S --procs 7 --streams 2100
  timeout 150 python3 -m voiceid bench streams --find-max --start 256 --duration 12 --chunk-ms 100 --audio "$AUDIO"
  ;;
11)  # second machine: first part + all wheels; nothing else fits
  python3 -c 'import voiceid.benchmarks.streams, voiceid.sources.websocket, voiceid.cli; print("imports ok")'
  ;;
12)  # per-stream CPU on this host's core: the tree vs the VAD floor patch (.benchdata/vp)
  for i in 1 2; do for d in "$PWD/daemon" "$PWD/.benchdata/vp/daemon"; do
    PYTHONPATH="$d:$PYTHONPATH" timeout 100 python3 bench/gpu/profile_frontend.py --streams 300 --duration 10 --no-profile --audio "$AUDIO" | tail -1 | sed "s|^|$d: |"
  done; done
  ;;
13|14) true ;;
15)  # onnxruntime-gpu ready: the GPU tests, then the worker-pool prototype
  mkdir -p /tmp/shared/audio && ln -sfn "$AUDIO" /tmp/shared/audio/librispeech-test-other
  VOICEID_SHARED=/tmp/shared VOICEID_TEST_CACHE=/tmp/vtc timeout 200 python3 -m pytest -q -p no:cacheprovider tests/models/test_gpu.py 2>&1 | tail -5
  timeout 330 python3 bench/gpu/pool.py --workers 14 --streams 2800 4200 5600 --chunk-ms 20 --audio "$AUDIO" --out "$OUT/pool.jsonl"
  ;;
16)  # the pool prototype, streams staggered over the hop (as if connected at random times)
  timeout 400 python3 bench/gpu/pool.py --workers 14 --streams 2800 4200 5600 7000 --chunk-ms 20 --audio "$AUDIO" --out "$OUT/pool2.jsonl"
  ;;
17)
  timeout 200 python3 bench/gpu/pool.py --workers 14 --streams 1400 2100 --chunk-ms 20 --audio "$AUDIO" --out "$OUT/pool3.jsonl"
  timeout 260 python3 bench/gpu/pool.py --workers 14 --streams 2800 4200 5600 --chunk-ms 100 --audio "$AUDIO" --out "$OUT/pool3.jsonl"
  ;;
20)  # third machine, after the static_after / lock changes: GPU tests, bench model, staggered streams
  mkdir -p /tmp/shared/audio && ln -sfn "$AUDIO" /tmp/shared/audio/librispeech-test-other
  VOICEID_SHARED=/tmp/shared VOICEID_TEST_CACHE=/tmp/vtc timeout 200 python3 -m pytest -q -p no:cacheprovider tests/models/test_gpu.py 2>&1 | tail -4
  timeout 120 python3 -m voiceid bench model --windows 2.0 --batches 1 32 128 512
  timeout 300 python3 -m voiceid bench streams --stagger --find-max --start 128 --duration 12 --audio "$AUDIO"
  ;;
# -- session 2 (after the per-hop front-end, numpy fbank, array-batching pool) -----------
s2-1)  # carries part-00 + .whl
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc
  python3 -c 'import voiceid.benchmarks.streams, voiceid.sources.websocket, voiceid.cli; print("imports ok")'
  ;;
s2-2)  # carries part-01 + .benchdata: per-stream CPU of the new front-end on this host
  for c in 20 100; do
    timeout 120 python3 bench/gpu/profile_frontend.py --streams 400 --duration 10 --chunk-ms $c --no-profile --audio "$AUDIO" | tail -1
  done
  ;;
s2-3)
  timeout 100 python3 bench/gpu/profile_frontend.py --streams 400 --duration 10 --top 20 --audio "$AUDIO" | tail -24
  ;;
s2-4) true ;;
s2-5)  # onnxruntime-gpu complete: GPU tests, concurrency + fusions, ladder rungs
  mkdir -p /tmp/shared/audio && ln -sfn "$AUDIO" /tmp/shared/audio/librispeech-test-other
  VOICEID_SHARED=/tmp/shared VOICEID_TEST_CACHE=/tmp/vtc timeout 200 python3 -m pytest -q -p no:cacheprovider tests/models/test_gpu.py 2>&1 | tail -3
  timeout 120 python3 bench/gpu/ort_streams.py --threads 1 2 3 --out "$OUT/streams.jsonl" 2>&1 | grep -v "^\s*$" | tail -6
  timeout 80 python3 bench/gpu/ort_streams.py --threads 1 2 --options fuse_conv_bias=1 --out "$OUT/streams.jsonl" 2>&1 | tail -4
  timeout 200 python3 bench/gpu/ort_ladder.py --audio "$AUDIO" --rungs 6 11 12 --out "$OUT/ladder.jsonl" 2>&1 | grep '^{' | cut -c1-900
  ;;
s2-6)  # the daemon core in one process, new front-end
  timeout 330 python3 -m voiceid bench streams --find-max --start 256 --duration 12 --audio "$AUDIO" --json > "$OUT/streams_inproc.json"
  python3 -c "import json,sys; d=json.load(open('$OUT/streams_inproc.json')); print('largest', d['largest_holding']); [print({k: r[k] for k in ('streams','windows_per_s','delivered','skipped_hops','mean_batch','p50_ms','p99_ms','max_ms','max_lag_ms','cpu_per_wall','gpu_util','holds')}) for r in d['runs']]"
  ;;
s2-7)  # pool prototype: 14 front-end processes + one GPU process batching arrays
  timeout 420 python3 bench/gpu/pool.py --workers 14 --streams 2800 4200 5600 7000 --chunk-ms 20 --audio "$AUDIO" --out "$OUT/pool.jsonl"
  ;;
s2-8)  # over loopback WebSockets, one process
  timeout 330 python3 -m voiceid bench streams --ws --find-max --start 256 --duration 12 --audio "$AUDIO" --json > "$OUT/streams_ws.json"
  python3 -c "import json,sys; d=json.load(open('$OUT/streams_ws.json')); print('largest', d['largest_holding']); [print({k: r[k] for k in ('streams','windows_per_s','delivered','skipped_hops','mean_batch','p50_ms','p99_ms','max_ms','max_lag_ms','cpu_per_wall','client_cpu_per_wall','gpu_util','holds')}) for r in d['runs']]"
  ;;
# -- session 2, second machine (fuse_conv_bias default, stream.slice_s) -------------------
s3-1|s3-2|s3-3|s3-4) true ;;  # carrying the parts (s3-2 also .benchdata)
s3-5)
  timeout 200 python3 -m voiceid bench model --json > "$OUT/model_grid.json"
  python3 - "$OUT/model_grid.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(d["gpu"], d["config"])
for r in d["rows"]:
    print(f'{r["window_s"]:4} {r["batch"]:4} {r["median_ms"]:8.3f} ms {r["windows_per_s"]:9.1f} win/s  dev {r["device_ms"]} ms {r["device_windows_per_s"]} win/s')
PY
  timeout 380 python3 -m voiceid bench streams --stagger --find-max --start 256 --duration 12 --audio "$AUDIO" | tail -12
  ;;
s3-6)
  timeout 250 python3 -m voiceid bench streams --find-max --start 64 --duration 12 --audio "$AUDIO" | tail -8
  timeout 250 python3 -m voiceid bench streams --find-max --start 128 --duration 12 --slice-s 0.1 --audio "$AUDIO" | tail -8
  ;;
s3-7)
  timeout 330 python3 bench/gpu/pool.py --workers 14 --streams 2800 4200 5600 7000 --audio "$AUDIO" --out "$OUT/pool.jsonl"
  timeout 200 python3 bench/gpu/pool.py --workers 14 --streams 1400 2100 --aligned --slice-s 0.1 --audio "$AUDIO" --out "$OUT/pool.jsonl"
  ;;
s3-8)
  timeout 400 python3 -m voiceid bench streams --ws --find-max --start 256 --duration 12 --audio "$AUDIO" | tail -10
  ;;
s3-9)
  # (a --gpu-threads 2 variant of ArrayBatcher was tried here: no gain, p99 125 ms at 4,200; removed)
  timeout 200 python3 -m voiceid bench streams --ws --streams 224 288 --slice-s 0.1 --duration 12 --audio "$AUDIO" | tail -3
  ;;
# -- session 2, third machine: 100 ms frames (what clients/voiceid_clients/stream.py sends) --
s4-1|s4-2|s4-3|s4-4) true ;;
s4-5)
  timeout 280 python3 -m voiceid bench streams --ws --chunk-ms 100 --find-max --start 256 --duration 12 --audio "$AUDIO" | grep -E "^ws|largest"
  timeout 300 python3 -m voiceid bench streams --stagger --chunk-ms 100 --find-max --start 512 --duration 12 --audio "$AUDIO" | grep -E "^inproc|largest"
  ;;
s4-6)
  timeout 250 python3 bench/gpu/pool.py --workers 14 --chunk-ms 100 --streams 4200 5600 7000 --audio "$AUDIO" --out "$OUT/pool100.jsonl"
  timeout 150 python3 bench/gpu/pool.py --workers 14 --max-batch 256 --streams 4200 --audio "$AUDIO" --out "$OUT/pool100.jsonl"
  ;;
# -- fourth machine: ArrayBatcher writes into a reused float32 batch (no concatenate/zero-fill)
s5-1|s5-2|s5-3|s5-4) true ;;
s5-5)
  timeout 300 python3 bench/gpu/pool.py --workers 14 --streams 3500 4200 5600 7000 --audio "$AUDIO" --out "$OUT/pool5.jsonl" | cut -c1-600
  ;;
# -- session 3: the daemon's own front-end worker processes (websocket.workers) ----------
s6-1|s6-2|s6-3|s6-4) true ;;
s6-5)
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc
  for n in 2800 4200 5600; do
    timeout 150 python3 -m voiceid bench streams --workers 12 --client-procs 3 --stagger --chunk-ms 100 \
      --max-batch 512 --streams $n --duration 12 --audio "$AUDIO" --json > "$OUT/pool-$n.json"
    python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['runs'][0]; print({k: r[k] for k in ('mode','streams','windows_per_s','delivered','skipped_hops','mean_batch','p50_ms','p99_ms','max_ms','max_lag_ms','cpu_per_wall','gpu_util','holds')}, r['extra'])" "$OUT/pool-$n.json"
  done
  ;;
s6-6)  # the batcher stops waiting once every worker has a block queued; workers do not wait
  for n in 1400 2100 2800 3500; do
    timeout 120 python3 -m voiceid bench streams --workers 12 --client-procs 3 --stagger --chunk-ms 100 \
      --max-batch 512 --streams $n --duration 12 --audio "$AUDIO" --json > "$OUT/pool6-$n.json"
    python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['runs'][0]; print({k: r[k] for k in ('mode','streams','windows_per_s','delivered','skipped_hops','mean_batch','p50_ms','p99_ms','max_ms','max_lag_ms','cpu_per_wall','gpu_util','holds')}, r['extra'])" "$OUT/pool6-$n.json"
  done
  ;;
# -- where the GPU time goes (kernel profile); the first Conv padded to 8 input channels ---
s7-1)
  timeout 300 python3 bench/gpu/kernels.py --out "$OUT/kernels.json"
  ;;
# -- workers: several requests in flight per worker, all window lengths in one request ------
s7-2)
  pool_json "$OUT/pool7-inflight4.json" --inflight 4 --streams 2100 2800 3500 4200 5600
  ;;
s7-3)  # side by side: one request in flight (like s6-6, but all lengths in it) vs 4
  for f in 1 4; do pool_json "$OUT/pool7-cmp-$f.json" --inflight $f --streams 2800 4200; done
  ;;
s7-4)  # where a hop's latency goes (extra.stages_ms), GIL switch interval 5 ms vs 1 ms
  pool_json "$OUT/pool7-stages-sw5.json" --streams 2800 4200
  pool_json "$OUT/pool7-stages-sw1.json" --streams 2800 4200 --switch-ms 1
  ;;
s7-5)  # the daemon reads requests with one recv_into(MSG_WAITALL) into reused buffers
  pool_json "$OUT/pool7-recvinto.json" --streams 2800 3500 4200 5600
  ;;
s7-7)  # the worker's engine sends from its event loop (no send thread): one request per iteration
  pool_json "$OUT/pool7-loopsend.json" --streams 2100 2800 3500 4200 5600
  ;;
s7-8)  # a host with more cores (nvidia-h200-x2: 32; one of its GPUs used): 24 workers,
       # 6 client processes
  nvidia-smi --query-gpu=name --format=csv,noheader | head -1; nproc
  pool_json "$OUT/pool7-x2.json" --workers 24 --client-procs 6 --streams 2800 4200 5600
  ;;
s7-6)  # who holds the daemon process's GIL at 4,200 streams, and a worker's time (py-spy;
       # its wheel carried in .pyspy)
  python3 -m pip install -q --no-index --no-deps --target /tmp/pyspy .pyspy/*.whl
  timeout 200 python3 -m voiceid bench streams --workers 12 --client-procs 3 --stagger \
    --chunk-ms 100 --max-batch 512 --duration 24 --audio "$AUDIO" --json --streams 4200 \
    > "$OUT/pool7-spy.json" 2> "$OUT/pool7-spy.log" &
  tpid=$!; sleep 2; pid=$(pgrep -P $tpid | head -1)
  for _ in $(seq 180); do  # 12 workers and 3 client processes: the clients start in 13.5 s
    [ "$(pgrep -P $pid | wc -l)" -ge 15 ] && break; sleep 1
  done
  sleep 16
  kids=$(pgrep -P $pid | sort -n | tr '\n' ' '); echo "daemon $pid, children: $kids"
  w=$(echo $kids | cut -d' ' -f3)
  ps -o pid,rss,pcpu,args -p $w | cut -c1-120
  /tmp/pyspy/bin/py-spy record --pid $w --duration 12 --rate 250 --format raw --threads \
    --nonblocking -o "$OUT/spy-worker.txt" > /dev/null 2>&1 &
  /tmp/pyspy/bin/py-spy record --pid $pid --duration 12 --rate 250 --format raw --threads \
    --gil --nonblocking -o "$OUT/spy-daemon-gil.txt" 2>&1 | tail -1
  wait
  python3 - "$OUT/pool7-spy.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["runs"][0]
print(r["streams"], r["p50_ms"], r["p99_ms"], r["cpu_per_wall"], r["extra"]["stages_ms"])
PY
  for f in "$OUT"/spy-*.txt; do
    echo "== $f"; python3 bench/gpu/spy_top.py "$f" --top 12
  done
  ;;
esac
