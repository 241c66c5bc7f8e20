#!/usr/bin/env bash
# One node, N accelerators (GPUs, or CPU processes with gloo), data-parallel under DeepSpeed ZeRO.
#   recipes/launch/single-node.sh RECIPE.yaml [NPROC] [dotted.key=value ...]
# e.g. recipes/launch/single-node.sh recipes/paper-lm1b-db.yaml 8 deepspeed=deepspeed/zero2.json
set -euo pipefail
RECIPE=${1:?recipe}; NPROC=${2:-$(python -c 'import torch; print(max(1, torch.cuda.device_count()))')}
shift $(( $# >= 2 ? 2 : 1 ))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}       # CPU ranks: one intra-op thread each unless told
exec deepspeed --num_accelerators "$NPROC" --master_port "${MASTER_PORT:-29500}" \
  --module huginn_db.train "$RECIPE" "$@"
