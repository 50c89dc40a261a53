#!/usr/bin/env bash
# Table 12 of the paper: AdamW (decoupled decay), LLaMA 60M/130M on C4, weight decay 0.1 / 0.05 / 0.01,
# methods WD=0, Uniform, AWD, AdaDecay, AlphaDecay. AlphaDecay ratios (0.6666, 5) for every decay
# (the release's AdamW scripts; tables.json training_recipe "LLaMa-60M adamw"). See scripts/README.md.
#   bash scripts/table12_adamw/run.sh
#   MODELS=llama_60m DECAYS=0.1 METHODS="uniform alphadecay" bash scripts/table12_adamw/run.sh
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

TABLE=table12_adamw
: "${MODELS:=llama_60m llama_130m}"
: "${DECAYS:=0.1 0.05 0.01}"
: "${METHODS:=wd0 uniform awd adadecay alphadecay}"
ad_validate

for model in $MODELS; do
    for seed in $SEEDS; do
        ad_has_method none && ad_run "$TABLE" "$model" adamw wd0 0 "$seed"
        for decay in $DECAYS; do
            for method in uniform awd adadecay alphadecay; do
                ad_has_method "$method" || continue
                ad_run "$TABLE" "$model" adamw "$method" "$decay" "$seed" "$EVERY" 0.6666 5
            done
        done
    done
done
ad_summary
