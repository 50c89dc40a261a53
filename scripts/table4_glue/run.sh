#!/usr/bin/env bash
# Table 4 of the paper: roberta-base fine-tuned on eight GLUE tasks with WD=0, Uniform, AWD, AdaDecay and
# AlphaDecay (python -m alphadecay.tasks.glue, transformers' Trainer with the AlphaDecay plug-in), then the table.
#
#   bash scripts/table4_glue/run.sh                            # 8 tasks x 5 methods x 3 seeds, a lane per visible GPU
#   GPUS=0,1,2,3 bash scripts/table4_glue/run.sh               # one run per GPU at a time
#   TASKS="rte mrpc" METHODS="uniform alphadecay" SEEDS="1" bash scripts/table4_glue/run.sh
#   SMOKE=1 bash scripts/table4_glue/run.sh                    # offline, CPU, minutes: a tiny world, then the table
#
# Variables: TASKS, METHODS (none uniform awd adadecay alphadecay), SEEDS (1 2 3), WD (0.1, the RoBERTa recipe's
# decay, the base of every method), MODEL (roberta-base or a folder), DATA_DIR (a folder with one subfolder of
# local files per task; default: the hub's nyu-mll/glue), OUT (runs/table4_glue), GPUS (default: every visible GPU,
# each run on one, as fairseq's recipe: one process per GPU, never Trainer's DataParallel), PARALLEL (CPU lanes),
# EXTRA (more flags for every run, e.g. "--epochs 3"), SAVE=1 (checkpoint every epoch; an interrupted run then
# continues from its newest checkpoint when the script is run again), DRY_RUN=1 (print the commands).
# The hyper-parameters are RoBERTa's GLUE recipe (python -m alphadecay.tasks.glue --help). Re-running skips
# finished runs. Without internet on the compute nodes: load each task once where the hub is reachable with the
# same HF_HOME (datasets caches it), then set HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
: "${TASKS:=cola mnli mrpc qnli qqp rte sst2 stsb}" "${METHODS:=none uniform awd adadecay alphadecay}"
: "${SEEDS:=1 2 3}" "${WD:=0.1}" "${MODEL:=roberta-base}" "${DATA_DIR:=}" "${EXTRA:=}"
source "$REPO/scripts/downstream.sh"
export WANDB_MODE="${WANDB_MODE:-}" TOKENIZERS_PARALLELISM=false
if [[ -z "$GPUS" && "${SMOKE:-0}" != 1 ]]; then   # a run that saw several GPUs would refuse to start
    count='import torch; print(",".join(map(str, range(torch.cuda.device_count()))))'
    GPUS="${CUDA_VISIBLE_DEVICES:-$("$PYTHON" -c "$count" 2>/dev/null)}"
fi

if [[ "${SMOKE:-0}" == 1 ]]; then
    : "${OUT:=$REPO/runs/table4_smoke}"
    rm -rf "$OUT"; mkdir -p "$OUT"
    export WANDB_MODE=disabled OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    "$PYTHON" "$HERE/make_glue_world.py" "$OUT/world" > "$OUT/world.log" 2>&1 \
        || { echo "error: building the tiny model and data failed; see $OUT/world.log" >&2; exit 1; }
    MODEL="$OUT/world/model" DATA_DIR="$OUT/world/data" TASKS="${SMOKE_TASKS:-mrpc stsb}" SEEDS=1
    PARALLEL="${PARALLEL:-2}"
    EXTRA="--max_steps 24 --batch_size 16 --lr 1e-3 --unbalancedWD_every 8 --log_every 8 --device cpu --no_wandb $EXTRA"
else
    : "${OUT:=$REPO/runs/table4_glue}"
fi

RUNS=()
for task in $TASKS; do
    for method in $METHODS; do
        flags="$(method_flags "$method" "$WD")" || exit 2
        decay="$WD"; [[ "$method" == none ]] && decay=0
        for seed in $SEEDS; do
            data=""; [[ -n "$DATA_DIR" ]] && data="--data_dir $DATA_DIR/$task"
            name="$task-$method-wd$decay-s$seed" save=""
            if [[ "${SAVE:-0}" == 1 ]]; then
                save="--save_each_epoch"
                ls -d "$OUT/$name"/checkpoint-* >/dev/null 2>&1 && save="$save --continue_from latest"
            fi
            RUNS+=("$name"$'\t'"$PYTHON -m alphadecay.tasks.glue --task $task --model_name_or_path $MODEL $data $flags --seed $seed $save $EXTRA")
        done
    done
done
echo "Table 4: ${#RUNS[@]} runs (tasks: $TASKS; methods: $METHODS; seeds: $SEEDS), OUT=$OUT"
grid_then_table 4 "(SMOKE: a random 2-layer RoBERTa after 24 updates on generated rows; the numbers mean nothing)"
