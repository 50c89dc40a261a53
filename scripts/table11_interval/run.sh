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

ratios() {
    case "$1" in
        1e-5|1e-05|0.00001) echo "0.6666 3" ;;
        *) echo "0.6666 5" ;;
    esac
}

for model in $MODELS; do
    for seed in $SEEDS; do
        ad_has_method none && ad_run "$TABLE" "$model" adam wd0 0 "$seed"
        for decay in $DECAYS; do
            read -r rmin rmax <<< "$(ratios "$decay")"
            ad_has_method uniform && ad_run "$TABLE" "$model" adam uniform "$decay" "$seed"
            ad_has_method awd && ad_run "$TABLE" "$model" adam awd "$decay" "$seed"
            ad_has_method adadecay && ad_run "$TABLE" "$model" adam adadecay "$decay" "$seed"
            if ad_has_method alphadecay; then
                for gap in $INTERVALS; do
                    ad_run "$TABLE" "$model" adam alphadecay "$decay" "$seed" "$gap" "$rmin" "$rmax"
                done
            fi
        done
    done
done
ad_summary
