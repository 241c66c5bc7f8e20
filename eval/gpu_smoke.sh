#!/usr/bin/env bash
# GPU smoke test: what the CPU suite cannot see, in one command of at most ~5 min on a GPU box.
#
#   eval/gpu_smoke.sh          # CUDA: PY must be a python with CUDA torch (+ deepspeed, xformers)
#   eval/gpu_smoke.sh --cpu    # the same parts on CPU at tiny sizes: a dry run of the script (~2 min)
#
# Environment: PY (default .venv/bin/python; nothing is installed here: `make install
# TORCH=torch` and `pip install xformers` first), OUT (default runs/gpu-smoke), HUGINN_DB_DATA
# (default ../shared/data, else shared/data; part c needs its TinyStories file), BUDGET
# (seconds for all parts, default 540: a hung part fails at its timeout instead of using up
# the session's device time).
#
# Parts, each a PASS/FAIL/SKIP line (gpu_checks.py adds one per check):
#   a  the demo recipe under DeepSpeed's launcher on 2 ranks: 3 steps + checkpoint + evaluation,
#      then resumed to 5 (resume=auto); metrics.jsonl must hold steps 1..5 (1 GPU: 1 rank, a1)
#   b  bf16 inside engine(...) for every objective (gpu_checks.py bf16)
#   c  a text BPTT run on a freshly trained small tokenizer, with its end-of-run evaluation
#   d  attention backend, checkpoint_core / loss_chunk / compile_core vs plain, KV cache
#      (gpu_checks.py kernels)
#   e  eval/bench_train.py --quick --warmup 2: tokens/s and MFU per objective
# OUT/summary.txt holds the lines, versions, device and nvidia-smi; OUT/<part>.log each part's
# output. Exit 1 if anything FAILed.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODE=gpu
for arg in "$@"; do
    case $arg in
        --cpu) MODE=cpu ;;
        -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "gpu_smoke: unknown argument $arg (--cpu, --help)" >&2; exit 2 ;;
    esac
done

# relative PY / OUT / data paths are the caller's, resolved before we cd to the checkout
abs() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
PY=${PY:-$ROOT/.venv/bin/python}
[[ $PY == */* ]] && PY=$(abs "$PY")
OUT=$(abs "${OUT:-$ROOT/runs/gpu-smoke}")
if [[ -z ${HUGINN_DB_DATA:-} ]]; then  # the README's default, else a shared/ copied into the checkout
    HUGINN_DB_DATA=$ROOT/../shared/data
    [[ -d $HUGINN_DB_DATA || ! -d $ROOT/shared/data ]] || HUGINN_DB_DATA=$ROOT/shared/data
fi
HUGINN_DB_DATA=$(abs "$HUGINN_DB_DATA")
export HUGINN_DB_DATA
BUDGET=${BUDGET:-540}
cd "$ROOT" || exit 2
mkdir -p "$OUT" || exit 2
SUMMARY=$OUT/summary.txt
FAILED=0

if [[ $MODE == cpu ]]; then
    export CUDA_VISIBLE_DEVICES=""  # a dry run on a GPU box stays on the CPU
    export OMP_NUM_THREADS=1        # tiny matmuls: more threads only add synchronisation
    CPU=(--cpu)
    # the demo at test size (as tests/test_distributed.py runs it)
    TINY=(model.hidden=64 model.mlp_hidden=128 train.micro_batch_size=8 train.threads=1 train.precision=fp32)
    TEXT_TINY=(model.hidden=64 model.mlp_hidden=128 model.context=64 data.text.seq_len=64
        train.micro_batch_size=4 train.threads=1 train.precision=fp32 objective.bptt.mean_recurrence=4)
    BENCH=()
else
    CPU=()
    TINY=()
    TEXT_TINY=()
    BENCH=(--gpu)
fi

line() {  # STATUS PART DETAIL: to the terminal and the summary
    local text
    text=$(printf '%-4s  %-24s %s' "$1" "$2" "$3")
    echo "$text"
    echo "$text" >>"$SUMMARY"
    [[ $1 == FAIL ]] && FAILED=1
    return 0
}

note() { echo "$*" | tee -a "$SUMMARY"; }

# LIMIT LOG CMD...: CMD under min(LIMIT, budget left) seconds, output appended to LOG;
# its status (124: timed out, 125: no time left to start it)
run_part() {
    local limit=$1 log=$2 left
    shift 2
    left=$((BUDGET - SECONDS))
    ((left < limit)) && limit=$left
    ((limit < 15)) && return 125
    echo "\$ $*" >>"$log"
    timeout --kill-after=15 "$limit" "$@" >>"$log" 2>&1
}

why() {  # STATUS LOG: a failure's reason, for its summary line
    local reason
    case $1 in
        124) echo "timed out (log ${2#"$OUT"/})" ;;
        125) echo "no time left in BUDGET=$BUDGET s" ;;
        *)
            # our one-line error first: the launcher's own error lines only repeat the exit code
            reason=$(grep -E 'huginn-db: error:' "$2" 2>/dev/null | tail -1)
            [[ -n $reason ]] || reason=$(grep -E 'Error|error|FAIL' "$2" 2>/dev/null | tail -1)
            echo "exit $1: ${reason:0:200} (log ${2#"$OUT"/})"
            ;;
    esac
}

checks_lines() {  # the PASS/FAIL/SKIP lines a gpu_checks.py run printed, into the summary
    grep -E '^(PASS|FAIL|SKIP) ' "$1" | while IFS= read -r l; do echo "$l" >>"$SUMMARY"; echo "$l"; done
    grep -qE '^FAIL ' "$1" && FAILED=1
    return 0
}

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- environment --------------------------------------------------------------------------------
: >"$SUMMARY"
note "# huginn_db GPU smoke test, $(date -u '+%Y-%m-%d %H:%M UTC'), mode $MODE, $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
note "# PY=$PY OUT=$OUT HUGINN_DB_DATA=$HUGINN_DB_DATA"
if ! "$PY" -c 'import torch' >/dev/null 2>&1; then
    line FAIL env "$PY cannot import torch (nothing is installed by this script: make install TORCH=torch)"
    exit 1
fi
run_part 120 "$OUT/env.log" "$PY" eval/gpu_checks.py env "${CPU[@]}" --json "$OUT/env.json"
status=$?
grep -E '^[a-z_]+=' "$OUT/env.log" | sed 's/^/  /' | tee -a "$SUMMARY"
get() { grep -E "^$1=" "$OUT/env.log" | tail -1 | cut -d= -f2-; }
GPUS=$(get gpus)
GPUS=${GPUS:-0}
HAVE_DS=1
[[ $(get deepspeed) == missing* ]] && HAVE_DS=0
if [[ $MODE == gpu ]]; then
    checks_lines "$OUT/env.log"
    if ((GPUS < 1)); then
        line FAIL env "no CUDA device visible to $PY (torch $(get torch)); eval/gpu_smoke.sh --cpu for a dry run"
        exit 1
    fi
    ((status == 0)) || line FAIL env "$(why $status "$OUT/env.log")"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
        note "nvidia-smi:"
        sed 's/^/  /' "$OUT/nvidia-smi.txt" >>"$SUMMARY"
        nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | sed 's/^/  /'
    else
        note "nvidia-smi: not on PATH"
    fi
else
    ((status == 0)) || line FAIL env "$(why $status "$OUT/env.log")"
fi
((HAVE_DS)) || note "deepspeed is not importable with $PY: parts a, b and c (the trainer) are SKIPped"
[[ $(get xformers_ops) == importable ]] || note "xformers.ops is not importable with $PY: its checks are SKIPped"

# --- a: launcher, checkpoint, resume ------------------------------------------------------------
part_a() {
    local n=2 name=a
    if [[ $MODE == gpu ]] && ((GPUS < 2)); then
        line SKIP a "2-rank launch: $GPUS GPU here; the launch and resume run on 1 rank instead (a1)"
        n=1 name=a1
    fi
    local run=$OUT/a-launch log=$OUT/a-launch.log t0=$SECONDS status
    rm -rf "$run" "$log" "$OUT/a-metrics-step3.jsonl"
    local args=(recipes/demo-db.yaml "run_dir=$run" train.save_every=3 train.log_every=1 train.dist_timeout=120
        "eval.num_steps=[1]" data.reasoning.test_examples=20 "${TINY[@]}")
    run_part 180 "$log" "$PY" -m deepspeed.launcher.runner --num_accelerators $n --master_port "$(free_port)" \
        --module huginn_db.train "${args[@]}" train.max_steps=3
    status=$?
    if ((status != 0)); then
        line FAIL $name "$n-rank launch, 3 steps: $(why $status "$log")"
        return
    fi
    cp "$run/metrics.jsonl" "$OUT/a-metrics-step3.jsonl"  # a resume keeps these rows as they are
    run_part 180 "$log" "$PY" -m deepspeed.launcher.runner --num_accelerators $n --master_port "$(free_port)" \
        --module huginn_db.train "${args[@]}" train.max_steps=5 train.extend_ok=true resume=auto
    status=$?
    if ((status != 0)); then
        line FAIL $name "$n-rank resume to 5 steps: $(why $status "$log")"
        return
    fi
    local steps
    steps=$("$PY" - "$run" "$OUT/a-metrics-step3.jsonl" <<'EOF'
import json, math, sys
from pathlib import Path
run, before = Path(sys.argv[1]), Path(sys.argv[2]).read_text().splitlines()
lines = [l for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
rows = [json.loads(l) for l in lines if "loss" in json.loads(l)]
steps = [r["step"] for r in rows]
finite = all(r["loss"] is not None and math.isfinite(r["loss"]) for r in rows)
kept = lines[: len(before)] == before  # retrained from scratch would have rewritten them
latest = (run / "checkpoints" / "latest").read_text().strip()
final = (run / "eval" / "final.json").is_file()
print(
    f"steps {steps}, losses {'finite' if finite else 'NOT finite'}, rows 1-3 {'kept' if kept else 'REWRITTEN'}, "
    f"latest {latest}, eval/final.json {'written' if final else 'MISSING'}"
)
sys.exit(0 if steps == [1, 2, 3, 4, 5] and finite and kept and latest == "step5" and final else 1)
EOF
    )
    status=$?
    if ((status == 0)); then
        line PASS $name "$n-rank launch 3 steps + resume=auto to 5: $steps ($((SECONDS - t0)) s)"
    else
        line FAIL $name "$n-rank launch + resume: $steps"
    fi
}

# --- b and d: eval/gpu_checks.py, one line per check and one for the part ----------------------
checks_part() {  # PART MODE TIMEOUT DESCRIPTION [gpu_checks.py args...]
    local part=$1 mode=$2 limit=$3 what=$4 log=$OUT/$1-$2.log t0=$SECONDS status
    shift 4
    rm -f "$log" "$OUT/$part-$mode.json"
    run_part "$limit" "$log" "$PY" eval/gpu_checks.py "$mode" "${CPU[@]}" --json "$OUT/$part-$mode.json" "$@"
    status=$?
    checks_lines "$log"
    if ((status == 0)); then
        line PASS "$part" "$what ($((SECONDS - t0)) s)"
    else
        line FAIL "$part" "$what: $(why $status "$log")"
    fi
}

part_b() {
    rm -rf "$OUT/b-bf16"
    checks_part b bf16 150 "bf16 in engine(...), every objective" --out "$OUT/b-bf16"
}

# --- c: text BPTT on a fresh tokenizer ----------------------------------------------------------
part_c() {
    local log=$OUT/c-text.log run=$OUT/c-text tok=$OUT/c-tokenizer t0=$SECONDS status
    local corpus=$HUGINN_DB_DATA/tinystories/tinystories_val.txt
    rm -rf "$run" "$tok" "$log"
    if [[ ! -f $corpus ]]; then
        line SKIP c "no $corpus (set HUGINN_DB_DATA to the shared data)"
        return
    fi
    run_part 60 "$log" "$PY" -m huginn_db.cli tokenizer train --input "$corpus" --vocab-size 512 --out "$tok"
    status=$?
    if ((status != 0)); then
        line FAIL c "tokenizer: $(why $status "$log")"
        return
    fi
    run_part 180 "$log" "$PY" -m huginn_db.train recipes/text-small-bptt.yaml "run_dir=$run" \
        "data.text.tokenizer=$tok/tokenizer.model" train.max_steps=4 train.save_every=0 train.log_every=1 \
        "eval.num_steps=[2]" eval.max_val_batches=2 "${TEXT_TINY[@]}"
    status=$?
    if ((status != 0)); then
        line FAIL c "text BPTT run: $(why $status "$log")"
        return
    fi
    local got
    got=$("$PY" - "$run" <<'EOF'
import json, sys
from pathlib import Path
path = Path(sys.argv[1], "eval", "final.json")
if not path.is_file():
    print("eval/final.json MISSING")
    sys.exit(1)
final = json.loads(path.read_text())
val = final.get("validation") or {}
print(f"final loss {final.get('final_loss')}, validation {json.dumps(val)[:160]}")
sys.exit(0 if val else 1)
EOF
    )
    status=$?
    if ((status == 0)); then
        line PASS c "text BPTT 4 steps, vocab 512: $got ($((SECONDS - t0)) s)"
    else
        line FAIL c "text BPTT: $got"
    fi
}

# --- d: kernels ---------------------------------------------------------------------------------
part_d() {
    checks_part d kernels 240 "kernels: attention, checkpoint/chunk/compile, KV cache"
}

# --- e: training benchmark ----------------------------------------------------------------------
part_e() {
    local log=$OUT/e-bench.log t0=$SECONDS status
    rm -f "$log" "$OUT/e-bench.json"
    run_part 150 "$log" "$PY" eval/bench_train.py "${BENCH[@]}" --quick --warmup 2 --json "$OUT/e-bench.json"
    status=$?
    if ((status != 0)); then
        line FAIL e "bench_train.py: $(why $status "$log")"
        return
    fi
    line PASS e "bench_train.py ${BENCH[*]}${BENCH[*]:+ }--quick --warmup 2 ($((SECONDS - t0)) s)"
    "$PY" - "$OUT/e-bench.json" <<'EOF' | tee -a "$SUMMARY"
import json, sys
out = json.load(open(sys.argv[1]))
print(f"  {out['device']}, {out['precision']}, attention {out['attention']}, "
      f"{out['peak_dtype']} matmul peak {out['peak_flops'] / 1e12:.2f} TFLOP/s")
for name, r in out["results"].items():
    print(f"  {name:<18} {r['tokens_per_s']:>12,.0f} tokens/s  MFU {r['mfu']:6.1%}  "
          f"{r['median_s'] * 1e3:8.1f} ms/step  peak Δ {r['peak_mem'] / 2**20:,.0f} MiB")
EOF
}

if ((HAVE_DS)); then
    part_a
    part_b
    part_c
else
    for p in a b c; do line SKIP $p "deepspeed not importable with $PY"; done
fi
part_d
part_e

note "# $((SECONDS)) s in all; $(grep -cE '^PASS ' "$SUMMARY") PASS, $(grep -cE '^FAIL ' "$SUMMARY") FAIL, $(grep -cE '^SKIP ' "$SUMMARY") SKIP"
exit $FAILED
