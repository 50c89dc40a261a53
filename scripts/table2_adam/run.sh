#!/usr/bin/env bash
# Table 2 of the paper: Adam (coupled L2 decay), LLaMA 60M/130M/350M/1B on C4,
# weight decay 1e-5 / 5e-6 / 1e-6, methods WD=0, Uniform, AWD, AdaDecay, AlphaDecay.
# AlphaDecay ratios (wd_min_ratio, wd_max_ratio): (0.6666, 3) for 1e-5, (0.6666, 5) for 5e-6 and 1e-6
# (the release's Adam scripts; tables.json table11 "ratios"). Recipe and variables: scripts/README.md.
#   bash scripts/table2_adam/run.sh
#   MODELS=llama_130m SEEDS="5 6 7" bash scripts/table2_adam/run.sh
#   DRY_RUN=1 bash scripts/table2_adam/run.sh
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

TABLE=table2_adam
: "${MODELS:=llama_60m llama_130m llama_350m llama_1b}"
: "${DECAYS:=1e-5 5e-6 1e-6}"
: "${METHODS:=wd0 uniform awd adadecay alphadecay}"
ad_validate

ratios() {  # decay -> "min max"
    case "$1" in
        1e-5|1e-05|0.00001) echo "0.6666 3" ;;
        *) echo "0.6666 5" ;;
    esac
}

for model in $MODELS; do
    for seed in $SEEDS; do
        # WD=0 does not depend on the decay column: one run per model and seed.
        ad_has_method none && ad_run "$TABLE" "$model" adam wd0 0 "$seed"
        for decay in $DECAYS; do
            read -r rmin rmax <<< "$(ratios "$decay")"
            for method in uniform awd adadecay alphadecay; do
                ad_has_method "$method" || continue
                ad_run "$TABLE" "$model" adam "$method" "$decay" "$seed" "$EVERY" "$rmin" "$rmax"
            done
        done
    done
done
ad_summary
