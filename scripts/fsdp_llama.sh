#!/usr/bin/env bash
# Pretrain LLaMA 1B / 3B / 7B on C4 with FSDP2 (--fsdp), on one 8-GPU node or on several nodes.
#
#   MODEL=1b bash scripts/fsdp_llama.sh                               # one node, 8 GPUs, AlphaDecay
#   MODEL=7b METHOD=uniform bash scripts/fsdp_llama.sh
#   # several nodes: run the same line on every node (c10d rendezvous at a host all nodes reach)
#   NNODES=4 RDZV_ENDPOINT=node0.cluster:29500 MODEL=7b bash scripts/fsdp_llama.sh
#   DRY_RUN=1 NNODES=2 RDZV_ENDPOINT=host:29500 MODEL=3b bash scripts/fsdp_llama.sh   # print the command only
#
# Variables (defaults: the paper's 1B recipe, Adam with coupled decay 1e-5; see scripts/README.md):
#   MODEL 1b|3b|7b or a config path   NNODES (1)   NPROC per node (8)   RDZV_ENDPOINT host:port (needed
#   when NNODES > 1)   RDZV_ID (alphadecay-<model>)   METHOD none|uniform|awd|adadecay|alphadecay
#   OPTIMIZER adam|adamw   WD (1e-5)   STEPS (100000)   WARMUP (STEPS/10)   LR (1e-3)   TOTAL_BATCH (512)
#   MICRO_BATCH (1b: 16, 3b: 8, 7b: 4)   DATA_ARGS (empty: stream C4 from the hub)   OUT (runs; the run lives in $OUT/fsdp/<name>)
#   PREPARED: a folder tokenized once (no network on the nodes; a run resumes on any number of GPUs), e.g.
#     alphadecay prepare-data --tokenizer t5-base --output /data/c4-t5 --dataset_name allenai/c4 --dataset_config en --workers 16
#     PREPARED=/data/c4-t5 MODEL=7b bash scripts/fsdp_llama.sh     # and every other run from the same folder
#   SEED (5)   DTYPE (bf16-mixed; bfloat16 = the release's pure bf16)   KEEP_LAST (2: the newest checkpoints kept; a 7B one with Adam's state is about 80 GB; 0 = all)
#   NO_WANDB=1   EXTRA_ARGS (appended, e.g. "--activation_checkpointing")   DRY_RUN=1
# Memory per GPU for each size: the README's FSDP table (python bench/memory_table.py).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

: "${MODEL:=1b}" "${NNODES:=1}" "${NPROC:=8}" "${RDZV_ENDPOINT:=}" "${METHOD:=alphadecay}"
: "${OPTIMIZER:=adam}" "${WD:=1e-5}" "${SEED:=5}" "${KEEP_LAST:=2}"
config="$(ad_config "$MODEL")" || exit 2
stem="$(ad_stem "$config")"
case "$stem" in llama_1b) micro=16 ;; llama_3b) micro=8 ;; *) micro=4 ;; esac
: "${MICRO_BATCH:=$micro}" "${STEPS:=100000}"
: "${WARMUP:=$(( STEPS / 10 ))}" "${RDZV_ID:=alphadecay-$stem}"
wandb_flag=""
[[ "$NO_WANDB" == 1 ]] && wandb_flag="--no_wandb"
(( NNODES == 1 )) || [[ -n "$RDZV_ENDPOINT" ]] || ad_die "NNODES=$NNODES needs RDZV_ENDPOINT=host:port (a host every node reaches)"
world=$(( NNODES * NPROC ))
(( TOTAL_BATCH % (world * MICRO_BATCH) == 0 )) || \
    ad_die "TOTAL_BATCH=$TOTAL_BATCH is not a multiple of $world GPUs x MICRO_BATCH=$MICRO_BATCH; change one of them"
method="$(ad_norm_method "$METHOD")" || exit 2
[[ "$OPTIMIZER" == adamw ]] && ratios="$(ad_adamw_ratios "$WD")" || ratios="$(ad_adam_ratios "$WD")"
# shellcheck disable=SC2086
read -r rmin rmax <<< "$ratios"

if (( NNODES == 1 )); then
    launch=(torchrun --standalone "--nproc_per_node=$NPROC")
else
    launch=(torchrun "--nnodes=$NNODES" "--nproc_per_node=$NPROC" --rdzv_backend c10d
            "--rdzv_endpoint=$RDZV_ENDPOINT" "--rdzv_id=$RDZV_ID")
fi
name="${stem}-fsdp-${OPTIMIZER}-${method}-wd${WD}-s${SEED}"
# bf16-mixed (float32 master weights and Adam moments, bf16 compute), not the pure bfloat16 of the 60M-350M
# tables (scripts/common.sh): over 1B-7B runs of 100k updates pure bf16 loses updates smaller than half a bf16
# ulp of the weight and freezes Adam's second moment (0.999 * v rounds back to v), and under FSDP2 the float32
# state is sharded, 12 bytes per parameter divided over the ranks. DTYPE=bfloat16 runs the release's dtype.
# shellcheck disable=SC2046,SC2086
prepared="$(ad_prepared_args)" || exit 2
cmd=("${launch[@]}" torchrun_main.py --fsdp --model_config "$config" --optimizer "$OPTIMIZER"
     --lr "$LR" --batch_size "$MICRO_BATCH" --total_batch_size "$TOTAL_BATCH" --num_training_steps "$STEPS"
     --warmup_steps "$WARMUP" --max_length "$MAX_LENGTH" --dtype "${DTYPE:-bf16-mixed}" --seed "$SEED"
     --eval_every 1000 --save_every 1000 --save_dir "$OUT/fsdp/$name" --continue_from latest
     --keep_last_checkpoints "$KEEP_LAST"
     --name "$name" --wandb_project "$WANDB_PROJECT"
     $(ad_method_flags "$method" "$WD" "$rmin" "$rmax" 500) $wandb_flag $DATA_ARGS $prepared $EXTRA_ARGS)
if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "${cmd[@]}"; echo
    exit 0
fi
cd "$AD_REPO"
exec "${cmd[@]}"
