# Shared by scripts/table4_glue/run.sh and scripts/table5_vit_tiny/run.sh (sourced): a grid of runs over lanes.
#
#   method_flags METHOD DECAY   -> the strategy flags of one method (none = WD=0 whatever DECAY says)
#   grid_then_table TABLE NOTE  -> run_grid, then make_tables.py --table TABLE (NOTE printed first under SMOKE=1);
#                                  exit code 1 if a run or the table failed
#   run_grid                    -> runs every "NAME<TAB>command" line of the array RUNS with $DIR_FLAG $OUT/NAME
#                                  added; a run whose metrics.jsonl has a final record is skipped, an unfinished
#                                  one is started again (--overwrite moves it aside) unless its command continues
#                                  it (--continue_from); GPUS="0,1,..." gives each lane its own GPU ("0,1;2,3":
#                                  each lane a group), else PARALLEL CPU lanes. Failed runs are named at the end
#                                  and the exit code is 1.
: "${PARALLEL:=1}" "${GPUS:=}" "${DRY_RUN:=0}" "${DIR_FLAG:=--output_dir}"
PYTHON="${PYTHON:-python3}"

method_flags() {
    case "$1" in
        none) echo "--strategy none --weight_decay 0" ;;
        uniform|awd|adadecay|alphadecay) echo "--strategy $1 --weight_decay $2" ;;
        *) echo "error: unknown method $1 (none uniform awd adadecay alphadecay)" >&2; return 2 ;;
    esac
}

finished() { [[ -f "$1/metrics.jsonl" ]] && grep -q '"type": "final"' "$1/metrics.jsonl"; }

_lane() {   # _lane INDEX LANES DEVICE
    local i name cmd
    for (( i = $1; i < ${#RUNS[@]}; i += $2 )); do
        IFS=$'\t' read -r name cmd <<< "${RUNS[$i]}"
        if finished "$OUT/$name"; then echo "skip $name (finished)"; continue; fi
        cmd="$cmd $DIR_FLAG '$OUT/$name'"
        [[ "$cmd" == *--continue_from* ]] || cmd="$cmd --overwrite"
        if [[ "$DRY_RUN" == 1 ]]; then echo "$cmd"; continue; fi
        echo "run  $name${3:+ (GPU $3)}"
        ( [[ -n "$3" ]] && export CUDA_VISIBLE_DEVICES="$3"
          eval "$cmd" ) >> "$OUT/$name.log" 2>&1 \
            || { echo "FAILED $name: see $OUT/$name.log"; echo "$name" >> "$OUT/.failed"; }
    done
}

run_grid() {
    mkdir -p "$OUT"; rm -f "$OUT/.failed"
    local devices=() l
    if [[ "$GPUS" == *";"* ]]; then IFS=';' read -r -a devices <<< "$GPUS"
    elif [[ -n "$GPUS" ]]; then IFS=',' read -r -a devices <<< "$GPUS"; fi
    local lanes=$(( ${#devices[@]} > 0 ? ${#devices[@]} : PARALLEL ))
    [[ "$DRY_RUN" == 1 ]] && lanes=1
    for (( l = 0; l < lanes; l++ )); do _lane "$l" "$lanes" "${devices[$l]:-}" & done
    wait
    if [[ -f "$OUT/.failed" ]]; then echo "error: $(wc -l < "$OUT/.failed") run(s) failed: $(tr '\n' ' ' < "$OUT/.failed")" >&2; return 1; fi
}

grid_then_table() {
    run_grid; local status=$?
    [[ "$DRY_RUN" == 1 ]] && return 0
    [[ "${SMOKE:-0}" == 1 ]] && echo "$2"
    "$PYTHON" "$REPO/scripts/make_tables.py" "$OUT" --table "$1" || status=1
    return $status
}
