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

ad_methods_grid "$TABLE" adam ad_adam_ratios "$EVERY"
ad_summary
