#!/usr/bin/env bash
# The ViT row of the paper's Table 5: ViT-tiny on ImageNet-1K with Uniform, AWD, AdaDecay and AlphaDecay at
# decays 1e-6 and 5e-6 (Adam, coupled decay, as the paper's table) plus WD=0 (python -m alphadecay.tasks.vit,
# DeiT's recipe through timm), then the table. Needs timm: pip install -e '.[vision]'.
#
#   IMAGENET=/data/imagenet GPUS=0,1,2,3,4,5,6,7 NPROC=8 bash scripts/table5_vit_tiny/run.sh   # one run on 8 GPUs at a time
#   IMAGENET=/data/imagenet GPUS=0,1 NPROC=1 bash scripts/table5_vit_tiny/run.sh   # two one-GPU runs side by side
#   SMOKE=1 bash scripts/table5_vit_tiny/run.sh                # offline, CPU, a minute: a tiny ViT, generated images
#
# IMAGENET: a folder with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (the validation images sorted into class
# folders, as torchvision's and timm's ImageFolder expect). Variables: METHODS (none uniform awd adadecay
# alphadecay), DECAYS (1e-6 5e-6), SEEDS (0), OUT (runs/table5_vit_tiny), GPUS, NPROC (ranks per run; GPUS is split
# into groups of NPROC), PARALLEL (CPU lanes), EXTRA (more flags), DRY_RUN=1. The DeiT recipe is the default of
# every flag (python -m alphadecay.tasks.vit --help): 300 epochs, batch 128 per rank (DeiT: 1024 in all),
# warm-up 5 epochs, cosine to 1e-5, RandAugment, Mixup 0.8 / CutMix 1.0, label smoothing 0.1, drop path 0.1,
# random erasing 0.25, repeated augmentation x3 (EXTRA=--no_repeated_aug turns it off). Interrupted runs resume
# (--continue_from latest) when the script is run again.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
: "${METHODS:=none uniform awd adadecay alphadecay}" "${DECAYS:=1e-6 5e-6}" "${SEEDS:=0}" "${EXTRA:=}" "${NPROC:=1}"
DIR_FLAG=--save_dir
source "$REPO/scripts/downstream.sh"
"$PYTHON" -c "import alphadecay, timm" 2>/dev/null || { echo "error: timm is not installed; pip install -e '.[vision]'" >&2; exit 2; }

if [[ "${SMOKE:-0}" == 1 ]]; then
    : "${OUT:=$REPO/runs/table5_smoke}"
    rm -rf "$OUT"; mkdir -p "$OUT"
    export WANDB_MODE=disabled OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    "$PYTHON" "$HERE/make_images.py" "$OUT/images" || { echo "error: generating the image folder failed" >&2; exit 1; }
    IMAGENET="$OUT/images" PARALLEL="${PARALLEL:-2}" DECAYS="1e-6"
    EXTRA="--img_size 32 --model_kwargs '{\"embed_dim\": 64, \"depth\": 2, \"num_heads\": 2, \"patch_size\": 8}' \
--batch_size 16 --num_training_steps 12 --warmup_epochs 1 --workers 0 --eval_batch_size 32 --save_every 6 \
--unbalancedWD_every 4 --log_every 2 --device cpu --no_wandb $EXTRA"
else
    : "${OUT:=$REPO/runs/table5_vit_tiny}"
    [[ -n "${IMAGENET:-}" && -d "${IMAGENET:-}/train" && -d "${IMAGENET:-}/val" ]] \
        || { echo "error: set IMAGENET to a folder holding train/ and val/ (one sub-folder per class)" >&2; exit 2; }
fi

launcher="$PYTHON -m alphadecay.tasks.vit"
(( NPROC > 1 )) && launcher="torchrun --standalone --nproc_per_node=$NPROC -m alphadecay.tasks.vit"
if [[ -n "${GPUS:-}" && "$NPROC" -gt 1 ]]; then   # lanes of NPROC GPUs each: "0,1,2,3" NPROC=2 -> "0,1" "2,3"
    IFS=',' read -r -a ids <<< "$GPUS"; groups=()
    for (( i = 0; i + NPROC <= ${#ids[@]}; i += NPROC )); do groups+=("$(IFS=','; echo "${ids[*]:i:NPROC}")"); done
    GPUS="$(IFS=';'; echo "${groups[*]}")"
fi

RUNS=()
for method in $METHODS; do
    decays="$DECAYS"; [[ "$method" == none ]] && decays="0"
    for wd in $decays; do
        flags="$(method_flags "$method" "$wd")" || exit 2
        for seed in $SEEDS; do
            name="vit-$method-wd$wd-s$seed"
            resume=""; [[ -d "$OUT/$name" ]] && ls -d "$OUT/$name"/model_* >/dev/null 2>&1 && resume="--continue_from latest"
            RUNS+=("$name"$'\t'"$launcher --data_dir $IMAGENET $flags --seed $seed $EXTRA $resume")
        done
    done
done
echo "Table 5 (ViT): ${#RUNS[@]} runs (methods: $METHODS; decays: $DECAYS; seeds: $SEEDS), OUT=$OUT"
grid_then_table vit "(SMOKE: a 2-block ViT after 12 updates on generated 32x32 images; the numbers mean nothing)"
