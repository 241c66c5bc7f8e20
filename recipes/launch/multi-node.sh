#!/usr/bin/env bash
# Several nodes over pdsh/ssh from a DeepSpeed hostfile (see ./hostfile).
#   recipes/launch/multi-node.sh HOSTFILE RECIPE.yaml [dotted.key=value ...]
# Every node needs the same checkout, venv and data paths; MASTER_ADDR is the first host.
set -euo pipefail
HOSTFILE=${1:?hostfile}; RECIPE=${2:?recipe}; shift 2
export NCCL_IB_DISABLE=${NCCL_IB_DISABLE:-0}         # set 1 on clusters without InfiniBand
export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-}     # e.g. eth0 when several interfaces exist
MASTER=$(awk '!/^#/ && NF {print $1; exit}' "$HOSTFILE")
exec deepspeed --hostfile "$HOSTFILE" --master_addr "$MASTER" --master_port "${MASTER_PORT:-29500}" \
  --module huginn_db.train "$RECIPE" "$@"
