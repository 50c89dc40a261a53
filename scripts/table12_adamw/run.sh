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

ad_methods_grid "$TABLE" adamw ad_adamw_ratios "$EVERY"
ad_summary
