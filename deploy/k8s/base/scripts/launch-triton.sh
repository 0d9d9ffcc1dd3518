#!/bin/bash
# Start Triton on the engine artifact's model repository.
#
# TRITON_WORLD_SIZE=1: one tritonserver process.
# TRITON_WORLD_SIZE=N: one MPI rank per GPU of a tensor-parallel engine, the way tensorrtllm_backend's
#   launch_triton_server.py starts it: rank 0 serves HTTP/gRPC/metrics and loads every model; ranks 1..N-1
#   load only `tensorrt_llm` and act as TensorRT-LLM workers. Each rank gets its own Python-backend shared
#   memory prefix so the ranks do not collide in /dev/shm.
# TRITON_BACKEND_DIR: set for the portable engine, whose Python backend comes from the nvidia-pytriton wheel.
set -euo pipefail

repository="${TRITON_MODEL_REPOSITORY:-/models/model_repository}"
world_size="${TRITON_WORLD_SIZE:-1}"
model="${TRITON_TENSORRT_LLM_MODEL:-tensorrt_llm}"

if ! [[ "$world_size" =~ ^[1-9][0-9]*$ ]]; then
  echo "launch-triton: TRITON_WORLD_SIZE must be a positive integer, got '$world_size'" >&2
  exit 2
fi
if [[ ! -d "$repository" ]]; then
  echo "launch-triton: no model repository at $repository" >&2
  exit 2
fi

common=(
  "--model-repository=$repository"
  --http-port="${TRITON_HTTP_PORT:-8000}" --grpc-port="${TRITON_GRPC_PORT:-8001}"
  --metrics-port="${TRITON_METRICS_PORT:-8002}"
  --disable-auto-complete-config
  # Finish in-flight requests on SIGTERM within the pod's termination grace period.
  --exit-timeout-secs="${TRITON_EXIT_TIMEOUT_SECS:-30}"
  # gRPC keepalive as `ingot serve` sets it (engines/triton/launcher.py): accept the gateways' pings (every
  # INGOT_TRITON_KEEPALIVE s, also while a request waits without data), ping gateways that went silent.
  --grpc-http2-min-recv-ping-interval-without-data=5000
  --grpc-keepalive-time=60000 --grpc-keepalive-timeout=20000
)
# Triton's admin APIs (load/unload models, configs, statistics, trace, logging, shared memory) answer only
# requests that carry a header no client can send (its name has spaces) with a random value: the gateway
# needs inference, health and metadata only. The metrics port is not affected. As `ingot serve` does locally.
admin_token="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
restricted="model-repository,model-config,statistics,trace,logging,shared-memory:admin apis are off=$admin_token"
common+=("--http-restricted-api=$restricted" "--grpc-restricted-protocol=$restricted")
if [[ -n "${TRITON_BACKEND_DIR:-}" ]]; then
  common+=("--backend-directory=$TRITON_BACKEND_DIR")
fi

if [[ "$world_size" == 1 ]]; then
  exec tritonserver "${common[@]}" --backend-config=python,shm-region-prefix-name=prefix0_
fi

# --allow-run-as-root only permits root; the pod runs these ranks as a non-root user.
command=(mpirun --allow-run-as-root)
for ((rank = 0; rank < world_size; rank++)); do
  if ((rank > 0)); then
    command+=(:)
  fi
  command+=(-n 1 tritonserver "${common[@]}" "--backend-config=python,shm-region-prefix-name=prefix${rank}_")
  if ((rank > 0)); then
    command+=(--model-control-mode=explicit "--load-model=$model")
  fi
done
exec "${command[@]}"
