#!/usr/bin/env bash
# Table 5 of the paper (GPT-nano row): GPT-2-style model (configs/gpt_nano.json) on C4,
# methods Uniform, AWD, AdaDecay, AlphaDecay. The paper does not state this row's decay or schedule;
# this script uses the 130M Adam recipe with weight decay 1e-5 and ratios (0.6666, 3) (scripts/README.md).
#   bash scripts/table5_gpt_nano/run.sh
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

TABLE=table5_gpt_nano
: "${MODELS:=gpt_nano}"
: "${DECAYS:=1e-5}"
: "${METHODS:=uniform awd adadecay alphadecay}"
: "${OPTIMIZER:=adam}"
ad_validate

ad_methods_grid "$TABLE" "$OPTIMIZER" ad_gpt_ratios "$EVERY"
ad_summary
