# shellcheck shell=bash
# Shared launcher for scripts/table*/run.sh (and scripts/mini_table2.sh). Source it, do not run it.
#
# Every knob is an environment variable whose default is the paper's value (see scripts/README.md):
#   NGPUS         processes (GPUs) per run. Unset: the paper's count for the model (60M: 1, 130M: 2,
#                 350M: 4, 1B: 8), capped at the GPUs torch can see; 0 = one plain CPU process.
#   SEEDS         seeds, e.g. "5" or "5 6 7"                               (default "5")
#   MODELS        model config stems (llama_60m ...), short names (60m) or paths to a .json
#   DECAYS        base weight decays as written in names and flags (1e-5 5e-6 ...)
#   METHODS       subset of: wd0 uniform awd adadecay alphadecay
#   OUT           output root (default <repo>/runs); a run lives in $OUT/<table>/<run name>
#   WANDB_PROJECT wandb project (default AlphaDecay); NO_WANDB=1 adds --no_wandb
#   DATA_ARGS     data flags, e.g. "--dataset_path ... --eval_dataset_path ... --tokenizer ..." (empty: hub C4)
#   PREPARED      a folder written by 'alphadecay prepare-data': every run trains (and evaluates) from it, with
#                 the tokenizer its manifest names; it comes after DATA_ARGS, so it wins over a --dataset_path there
#   STEPS, WARMUP override --num_training_steps / --warmup_steps (WARMUP defaults to STEPS/10 when only STEPS is set)
#   LR TOTAL_BATCH MICRO_BATCH MAX_LENGTH EVAL_EVERY EVAL_TOKENS SAVE_EVERY DTYPE WORKERS: recipe overrides
#   EVERY         --unbalancedWD_every of AlphaDecay/AdaDecay (default 500; Table 11 uses INTERVALS instead)
#   WD_MIN_RATIO, WD_MAX_RATIO   override AlphaDecay's ratios for every decay
#   EXTRA_ARGS    appended verbatim to every command (last flag wins in argparse)
#   DRY_RUN=1     print the commands, run nothing
#   QUIET=1       training output only to <run>/train.log; one summary line per run on the terminal
#   RETRY_FAILED=1  relaunch runs marked FAILED by an earlier attempt (default: leave them)
#   PYTHON, TORCHRUN  executables (default python, torchrun)
# DATA_ARGS and EXTRA_ARGS are split on white space: paths must not contain spaces.

AD_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
: "${OUT:=$AD_REPO/runs}"
: "${SEEDS:=5}"
: "${WANDB_PROJECT:=AlphaDecay}"
: "${NO_WANDB:=0}"
: "${DATA_ARGS:=}"
: "${PREPARED:=}"
: "${EXTRA_ARGS:=}"
: "${DRY_RUN:=0}"
: "${QUIET:=0}"
: "${RETRY_FAILED:=0}"
: "${STEPS:=}"
: "${WARMUP:=}"
: "${LR:=1e-3}"
: "${TOTAL_BATCH:=512}"
: "${MICRO_BATCH:=}"
: "${MAX_LENGTH:=256}"
: "${EVAL_EVERY:=1000}"
: "${EVAL_TOKENS:=10_000_000}"
: "${SAVE_EVERY:=10000}"
: "${DTYPE:=}"
: "${WORKERS:=}"
: "${EVERY:=500}"
: "${WD_MIN_RATIO:=}"
: "${WD_MAX_RATIO:=}"
: "${PYTHON:=python}"
: "${TORCHRUN:=torchrun}"

AD_LAUNCHED=0
AD_SKIPPED=0
AD_FAILED=0
AD_FAILED_NAMES=()
AD_STOP=0
AD_VISIBLE_GPUS=""

ad_log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
ad_die() { printf 'error: %s\n' "$*" >&2; exit 2; }

# --- models --------------------------------------------------------------------------------------
# ad_config MODEL -> path of the JSON config (relative to the repo when it lives there)
ad_config() {
    local m="$1"
    if [[ "$m" == *.json ]]; then
        [[ -f "$m" || -f "$AD_REPO/$m" ]] || ad_die "model config $m not found"
        echo "$m"; return
    fi
    if [[ -f "$AD_REPO/configs/$m.json" ]]; then echo "configs/$m.json"; return; fi
    if [[ -f "$AD_REPO/configs/llama_$m.json" ]]; then echo "configs/llama_$m.json"; return; fi
    ad_die "no config for model '$m' (looked for configs/$m.json and configs/llama_$m.json)"
}

ad_stem() { local b; b="$(basename "$1")"; echo "${b%.json}"; }

# ad_model_defaults STEM -> sets M_STEPS M_WARMUP M_NGPUS M_MICRO (the paper's / GaLore's recipe)
ad_model_defaults() {
    case "$1" in
        llama_60m)  M_STEPS=10000;  M_WARMUP=1000;  M_NGPUS=1; M_MICRO=256 ;;
        llama_130m) M_STEPS=20000;  M_WARMUP=2000;  M_NGPUS=2; M_MICRO=256 ;;
        llama_350m) M_STEPS=60000;  M_WARMUP=6000;  M_NGPUS=4; M_MICRO=128 ;;
        llama_1b)   M_STEPS=100000; M_WARMUP=10000; M_NGPUS=8; M_MICRO=16 ;;
        gpt_nano)   M_STEPS=20000;  M_WARMUP=2000;  M_NGPUS=2; M_MICRO=128 ;;
        *)          M_STEPS=20000;  M_WARMUP=2000;  M_NGPUS=1; M_MICRO=256 ;;
    esac
}

ad_visible_gpus() {
    if [[ -z "$AD_VISIBLE_GPUS" ]]; then
        AD_VISIBLE_GPUS="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
        [[ "$AD_VISIBLE_GPUS" =~ ^[0-9]+$ ]] || AD_VISIBLE_GPUS=0
    fi
    echo "$AD_VISIBLE_GPUS"
}

# --- methods -------------------------------------------------------------------------------------
ad_norm_method() {
    case "${1,,}" in
        wd0|none|wd=0) echo none ;;
        uniform) echo uniform ;;
        awd) echo awd ;;
        adadecay) echo adadecay ;;
        alphadecay|ours) echo alphadecay ;;
        *) ad_die "unknown method '$1' (choose from wd0 uniform awd adadecay alphadecay)" ;;
    esac
}

# ad_method_flags METHOD DECAY MIN_RATIO MAX_RATIO EVERY -> prints the method's flags
ad_method_flags() {
    local method="$1" decay="$2" rmin="$3" rmax="$4" every="$5"
    case "$method" in
        none)     echo "--weight_decay 0" ;;
        uniform)  echo "--weight_decay $decay" ;;
        awd)      echo "--weight_decay $decay --use_AWD_NeurIPS2023" ;;
        adadecay) echo "--weight_decay $decay --use_modulewise_wd --alpha_positively_with_WD --unbalancedWD_every $every --esd_metric_for_tb gradnorm --assign_func layerwise_sigmoid" ;;
        alphadecay) echo "--weight_decay $decay --use_modulewise_wd --alpha_positively_with_WD --unbalancedWD_every $every --esd_metric_for_tb alpha --assign_func tb_linear_map --wd_min_ratio ${WD_MIN_RATIO:-$rmin} --wd_max_ratio ${WD_MAX_RATIO:-$rmax}" ;;
    esac
}

# --- run state -----------------------------------------------------------------------------------
ad_finished() { [[ -f "$1/metrics.jsonl" ]] && grep -q '"type": *"final"' "$1/metrics.jsonl"; }
ad_has_checkpoint() { compgen -G "$1/model_[0-9]*/training_state.pt" >/dev/null; }
ad_final_ppl() {
    "$PYTHON" - "$1/metrics.jsonl" <<'EOF' 2>/dev/null
import json, sys
last = None
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if r.get("type") == "final":
        last = r
print(f"{last['eval_ppl']:.2f}" if last and last.get("eval_ppl") is not None else "n/a")
EOF
}

trap 'AD_STOP=1' INT TERM

# ad_run TABLE MODEL OPTIMIZER METHOD DECAY SEED [EVERY] [MIN_RATIO MAX_RATIO] [EXTRA...]
#   One training run: skipped when its metrics.jsonl has a final record, resumed (--continue_from latest)
#   when it has a checkpoint, started otherwise.

# The data flags of PREPARED (nothing when it is unset): the folder and the tokenizer its manifest names.
ad_prepared_args() {
    [[ -z "$PREPARED" ]] && return 0
    local tokenizer
    tokenizer="$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1] + "/manifest.json"))["tokenizer"]["name"])' "$PREPARED" 2>/dev/null)" \
        || { echo "error: PREPARED=$PREPARED has no readable manifest.json; run alphadecay prepare-data --output $PREPARED ... first" >&2; return 2; }
    echo "--dataset_path $PREPARED --tokenizer $tokenizer"
}

ad_run() {
    local table="$1" model="$2" optimizer="$3" method decay="$5" seed="$6" every="${7:-$EVERY}"
    local rmin="${8:-0.6666}" rmax="${9:-3}"
    method="$(ad_norm_method "$4")"
    shift 9 2>/dev/null || shift $#
    local run_extra=("$@")
    [[ "$AD_STOP" == 1 ]] && return 0
    [[ "$method" == none ]] && decay=0

    local config stem
    config="$(ad_config "$model")"; stem="$(ad_stem "$config")"
    ad_model_defaults "$stem"
    local steps="${STEPS:-$M_STEPS}" warmup
    if [[ -n "$WARMUP" ]]; then warmup="$WARMUP"
    elif [[ -n "$STEPS" ]]; then warmup=$(( STEPS / 10 ))
    else warmup="$M_WARMUP"; fi

    local ngpus
    if [[ -n "${NGPUS:-}" ]]; then ngpus="$NGPUS"
    else
        ad_visible_gpus >/dev/null   # in this shell: the count is cached in AD_VISIBLE_GPUS
        ngpus=$(( AD_VISIBLE_GPUS < M_NGPUS ? AD_VISIBLE_GPUS : M_NGPUS ))
    fi
    local procs=$(( ngpus > 0 ? ngpus : 1 ))
    (( TOTAL_BATCH % procs == 0 )) || ad_die "TOTAL_BATCH=$TOTAL_BATCH is not divisible by $procs processes; set NGPUS to a divisor"
    local per_rank=$(( TOTAL_BATCH / procs )) micro="${MICRO_BATCH:-$M_MICRO}"
    (( micro > per_rank )) && micro=$per_rank
    while (( per_rank % micro != 0 )); do micro=$(( micro / 2 )); done
    (( micro >= 1 )) || micro=1

    local name="${stem}-${optimizer}-${method}-wd${decay}"
    # The interval is part of the name in Table 11 and whenever it is not the paper's 500.
    if [[ "$method" == alphadecay && -n "${AD_NAME_EVERY:-}" ]] || \
       [[ ( "$method" == alphadecay || "$method" == adadecay ) && "$every" != 500 ]]; then
        name+="-every${every}"
    fi
    # AD_NAME_TAG (set by a caller) tells apart runs that share model, optimizer, method and decay (LLR's table).
    [[ -n "${AD_NAME_TAG:-}" ]] && name+="-${AD_NAME_TAG}"
    name+="-s${seed}"
    local save_dir="$OUT/$table/$name"

    if ad_finished "$save_dir"; then
        AD_SKIPPED=$((AD_SKIPPED + 1))
        ad_log "skip $table/$name (finished: ppl $(ad_final_ppl "$save_dir"))"
        return 0
    fi
    if [[ -f "$save_dir/FAILED" && "$RETRY_FAILED" != 1 ]]; then
        AD_SKIPPED=$((AD_SKIPPED + 1)); AD_FAILED_NAMES+=("$table/$name (earlier attempt)")
        ad_log "skip $table/$name (FAILED before: $(head -c 200 "$save_dir/FAILED"); RETRY_FAILED=1 to relaunch)"
        return 0
    fi

    local cmd=()
    if (( ngpus == 0 )); then
        cmd=("$PYTHON" torchrun_main.py --device cpu)
    else
        # --standalone picks a free rendezvous port: several scripts can run side by side.
        cmd=("$TORCHRUN" --standalone "--nproc_per_node=$ngpus" torchrun_main.py)
    fi
    cmd+=(--model_config "$config" --optimizer "$optimizer" --seed "$seed" --lr "$LR"
          --batch_size "$micro" --total_batch_size "$TOTAL_BATCH"
          --num_training_steps "$steps" --warmup_steps "$warmup" --scheduler cosine --min_lr_ratio 0.1
          --max_length "$MAX_LENGTH")
    # shellcheck disable=SC2207
    cmd+=($(ad_method_flags "$method" "$decay" "$rmin" "$rmax" "$every"))
    local dtype="$DTYPE"
    # The paper's tables ran pure bf16 (weights and Adam moments); the trainer's own GPU default is bf16-mixed.
    [[ -z "$dtype" && $ngpus -gt 0 ]] && dtype=bfloat16
    [[ -n "$dtype" ]] && cmd+=(--dtype "$dtype")
    [[ -n "$WORKERS" ]] && cmd+=(--workers "$WORKERS")
    cmd+=(--eval_every "$EVAL_EVERY" --target_eval_tokens "$EVAL_TOKENS" --save_every "$SAVE_EVERY"
          --save_dir "$save_dir" --name "$name" --wandb_name "$name" --wandb_project "$WANDB_PROJECT"
          --tags "$table")
    [[ "$NO_WANDB" == 1 ]] && cmd+=(--no_wandb)
    # shellcheck disable=SC2206
    [[ -n "$DATA_ARGS" ]] && cmd+=($DATA_ARGS)
    local prepared
    prepared="$(ad_prepared_args)" || return 2
    # shellcheck disable=SC2206
    [[ -n "$prepared" ]] && cmd+=($prepared)
    (( ${#run_extra[@]} )) && cmd+=("${run_extra[@]}")
    # shellcheck disable=SC2206
    [[ -n "$EXTRA_ARGS" ]] && cmd+=($EXTRA_ARGS)
    local resuming=0
    if ad_has_checkpoint "$save_dir"; then cmd+=(--continue_from latest); resuming=1; fi

    if [[ "$DRY_RUN" == 1 ]]; then
        printf '%q ' "${cmd[@]}"; printf '\n'
        AD_LAUNCHED=$((AD_LAUNCHED + 1))
        return 0
    fi

    mkdir -p "$save_dir"
    local log="$save_dir/train.log" t0=$SECONDS rc
    ad_log "$([[ $resuming == 1 ]] && echo resume || echo start) $table/$name ($procs proc, micro-batch $micro, $steps updates)"
    { printf '# %s\n' "$(date -Is)"; printf '%q ' "${cmd[@]}"; printf '\n'; } >> "$log"
    if [[ "$QUIET" == 1 ]]; then
        (cd "$AD_REPO" && "${cmd[@]}") >> "$log" 2>&1
        rc=$?
    else
        (cd "$AD_REPO" && "${cmd[@]}") 2>&1 | tee -a "$log"
        rc=${PIPESTATUS[0]}
    fi
    AD_LAUNCHED=$((AD_LAUNCHED + 1))
    local took=$(( SECONDS - t0 ))
    if (( rc != 0 )) && [[ "$AD_STOP" == 1 ]]; then
        ad_log "interrupted $table/$name after ${took}s (exit $rc); rerun the script to resume"
    elif (( rc != 0 )); then
        AD_FAILED=$((AD_FAILED + 1)); AD_FAILED_NAMES+=("$table/$name")
        echo "exit $rc at $(date -Is): $(grep -m1 '^error:' "$log" | tail -c 300)" > "$save_dir/FAILED"
        ad_log "FAILED $table/$name (exit $rc after ${took}s; see $log)"
    elif ad_finished "$save_dir"; then
        rm -f "$save_dir/FAILED"
        ad_log "done $table/$name in ${took}s: final eval ppl $(ad_final_ppl "$save_dir")"
        [[ -n "${PRUNE_CHECKPOINTS:-}" && "$PRUNE_CHECKPOINTS" == 1 ]] && rm -rf "$save_dir"/model_[0-9]*
    else
        # Exit 0 without a final record: stopped by a signal after writing a checkpoint.
        ad_log "stopped $table/$name at a checkpoint after ${took}s; rerun the script to resume"
        AD_STOP=1
    fi
    return 0
}

# ad_summary: one line, exit status 1 when some run failed
# The release's AlphaDecay ratio pairs (wd_min_ratio wd_max_ratio) by decay: Adam (tables.json table11
# "ratios"), AdamW (training_recipe "LLaMa-60M adamw") and GPT-nano.
ad_adam_ratios() { case "$1" in 1e-5|1e-05|0.00001) echo "0.6666 3" ;; *) echo "0.6666 5" ;; esac; }
ad_adamw_ratios() { echo "0.6666 5"; }
ad_gpt_ratios() { echo "0.6666 3"; }

# The paper's grid over $MODELS x $SEEDS: WD=0 once (it does not depend on the decay column), then for each
# of $DECAYS Uniform, AWD, AdaDecay and AlphaDecay at each interval given (only methods in $METHODS).
ad_methods_grid() {  # table optimizer ratios_function "intervals"
    local table="$1" optimizer="$2" ratios="$3" intervals="$4" model seed decay rmin rmax method gap
    for model in $MODELS; do
        for seed in $SEEDS; do
            ad_has_method none && ad_run "$table" "$model" "$optimizer" wd0 0 "$seed"
            for decay in $DECAYS; do
                read -r rmin rmax <<< "$("$ratios" "$decay")"
                for method in uniform awd adadecay; do
                    ad_has_method "$method" || continue
                    ad_run "$table" "$model" "$optimizer" "$method" "$decay" "$seed" "$EVERY" "$rmin" "$rmax"
                done
                ad_has_method alphadecay || continue
                for gap in $intervals; do
                    ad_run "$table" "$model" "$optimizer" alphadecay "$decay" "$seed" "$gap" "$rmin" "$rmax"
                done
            done
        done
    done
    return 0
}

ad_summary() {
    local what="launched"; [[ "$DRY_RUN" == 1 ]] && what="printed"
    ad_log "summary: $AD_LAUNCHED $what, $AD_SKIPPED skipped, $AD_FAILED failed"
    local n
    for n in "${AD_FAILED_NAMES[@]}"; do ad_log "  failed: $n"; done
    [[ "$AD_STOP" == 1 ]] && ad_log "interrupted: rerun the same command to finish the missing runs"
    (( AD_FAILED == 0 ))
}

# ad_validate: fail early (before any run) on a typo in MODELS, METHODS, SEEDS or DECAYS
ad_validate() {
    local x
    for x in $MODELS; do ad_config "$x" >/dev/null; done
    for x in $METHODS; do ad_norm_method "$x" >/dev/null; done
    for x in $SEEDS; do [[ "$x" =~ ^[0-9]+$ ]] || ad_die "SEEDS must be integers, got '$x'"; done
    for x in $DECAYS; do [[ "$x" =~ ^[0-9.]+([eE][-+]?[0-9]+)?$ ]] || ad_die "DECAYS must be numbers, got '$x'"; done
    [[ -z "${NGPUS:-}" || "$NGPUS" =~ ^[0-9]+$ ]] || ad_die "NGPUS must be a number, got '$NGPUS'"
    [[ -z "$STEPS" || "$STEPS" =~ ^[0-9]+$ ]] || ad_die "STEPS must be a number, got '$STEPS'"
    [[ "$DRY_RUN" == 1 ]] || mkdir -p "$OUT" || ad_die "cannot create OUT=$OUT"
    ad_log "OUT=$OUT MODELS='$MODELS' DECAYS='$DECAYS' METHODS='$METHODS' SEEDS='$SEEDS'"
    if [[ -z "${NGPUS:-}" ]]; then
        ad_visible_gpus >/dev/null
        [[ "$AD_VISIBLE_GPUS" == 0 ]] && ad_log "warning: no GPU visible: every run is one CPU process (NGPUS=0) with the full recipe; shrink it with STEPS/TOTAL_BATCH/MICRO_BATCH/MAX_LENGTH"
    fi
    [[ "$DRY_RUN" == 1 ]] && echo "# commands run from $AD_REPO"
    return 0
}

# ad_has_method METHOD : is it selected in METHODS?
ad_has_method() { local m; for m in $METHODS; do [[ "$(ad_norm_method "$m")" == "$1" ]] && return 0; done; return 1; }
