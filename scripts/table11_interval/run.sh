#!/usr/bin/env bash
# Table 11 of the paper: AlphaDecay with the decays re-assigned every GAP updates
# (--unbalancedWD_every 500 250 100 50 1), Adam, LLaMA 60M/130M, decays 1e-5 (ratios 0.6666, 3),
# 5e-6 and 1e-6 (ratios 0.6666, 5), plus Uniform for reference. See scripts/README.md.
# GAP=1 recomputes every module's ESD at every update: the slowest column by far.
#   bash scripts/table11_interval/run.sh
#   INTERVALS="500 100" MODELS=llama_60m bash scripts/table11_interval/run.sh
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

TABLE=table11_interval
: "${MODELS:=llama_60m llama_130m}"
: "${DECAYS:=1e-5 5e-6 1e-6}"
: "${METHODS:=uniform alphadecay}"
: "${INTERVALS:=500 250 100 50 1}"
AD_NAME_EVERY=1            # run names carry -every<GAP>
ad_validate
for gap in $INTERVALS; do [[ "$gap" =~ ^[0-9]+$ && "$gap" -ge 1 ]] || ad_die "INTERVALS must be positive integers, got '$gap'"; done

ad_methods_grid "$TABLE" adam ad_adam_ratios "$INTERVALS"
ad_summary
