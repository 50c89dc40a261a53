#!/usr/bin/env bash
# Table 3 of the paper: zero-shot ARC-c, ARC-e, PIQA, HellaSwag, OBQA, Winogrande and BoolQ of the pretrained
# LLaMA-1B of each method, with lm-evaluation-harness (pip install -e '.[eval]'), then the table.
#
#   bash scripts/table3_zero_shot/run.sh                       # the latest checkpoint of each Table 2 LLaMA-1B run
#   bash scripts/table3_zero_shot/run.sh runs/x/model_100000 runs/y/model_100000     # any checkpoints
#   SMOKE=1 bash scripts/table3_zero_shot/run.sh               # offline, toy scale: tiny runs, stand-in tasks
#
# Variables: OUT (runs), SEED_GLOB (s5: which Table 2 runs), DEVICE, DTYPE (auto), BATCH (auto), LIMIT,
# TASK_SET (alphadecay: this paper's tasks; llr: the LLR paper's, with SIQA, e.g. for scripts/llr_fineweb's 1B runs).
# Each checkpoint gets zero_shot.json; table.py prints the table with the paper's rows.
# Without internet on the compute nodes: run once where the hub is reachable, with the same HF_HOME
# (lm-eval downloads each task's dataset into the datasets cache), then use HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
: "${OUT:=$REPO/runs}" "${SEED_GLOB:=s5}" "${DTYPE:=auto}" "${BATCH:=auto}" "${LIMIT:=}" "${TASK_SET:=alphadecay}"
PYTHON="${PYTHON:-python3}"
python_has() { "$PYTHON" -c "import $1" 2>/dev/null; }
python_has lm_eval || { echo "error: lm-eval is not installed; pip install -e '.[eval]' (lm-eval==0.4.13)" >&2; exit 2; }
extra=()
[[ -n "${DEVICE:-}" ]] && extra+=(--device "$DEVICE")
[[ -n "$LIMIT" ]] && extra+=(--limit "$LIMIT")

if [[ "${SMOKE:-0}" == 1 ]]; then
    DATA="${ALPHADECAY_DATA_DIR:-$REPO/../shared/data}"
    [[ -d "$DATA/c4/en" && -d "$DATA/tokenizers/t5-base" ]] || { echo "error: no local C4 sample or tokenizer under $DATA; set ALPHADECAY_DATA_DIR" >&2; exit 2; }
    smoke="$OUT/table3_smoke"
    rm -rf "$smoke"; mkdir -p "$smoke/tasks"
    export WANDB_MODE=disabled OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false
    checkpoints=()
    for method in uniform alphadecay; do
        flags=(--weight_decay 1e-5)
        [[ "$method" == alphadecay ]] && flags+=(--use_modulewise_wd --alpha_positively_with_WD --unbalancedWD_every 2)
        (cd "$REPO" && "$PYTHON" torchrun_main.py --model_config configs/llama_9m.json --batch_size 4 --max_length 64 \
            --num_training_steps 4 --warmup_steps 1 --eval_every 0 --save_every 0 --target_eval_tokens 2000 \
            --workers 0 --dtype float32 --no_wandb --save_dir "$smoke/llama_9m-$method" \
            --dataset_path "$DATA/c4/en/c4-dev.00000-of-00002.json.gz" \
            --eval_dataset_path "$DATA/c4/en/c4-dev.00001-of-00002.json.gz" \
            --tokenizer "$DATA/tokenizers/t5-base" "${flags[@]}") > "$smoke/llama_9m-$method.log" 2>&1 \
            || { echo "error: the tiny $method run failed; see $smoke/llama_9m-$method.log" >&2; exit 1; }
        checkpoints+=("$smoke/llama_9m-$method/model_4")
    done
    # Stand-in tasks: a few two-choice items and yes/no questions, one YAML per paper task.
    "$PYTHON" - "$smoke/tasks" <<'PY'
import json, os, sys
folder = sys.argv[1]
items = [{"q": "The sky on a clear day is", "c": [" blue", " a piano"], "a": 0},
         {"q": "Ice is made of frozen", "c": [" bicycles", " water"], "a": 1},
         {"q": "A cat is a kind of", "c": [" animal", " number"], "a": 0},
         {"q": "People read books with their", "c": [" elbows", " eyes"], "a": 1}]
with open(os.path.join(folder, "items.jsonl"), "w") as f:
    f.writelines(json.dumps(i) + "\n" for i in items)
for task in ("arc_challenge", "arc_easy", "piqa", "hellaswag", "openbookqa", "winogrande", "boolq"):
    metrics = "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    if task not in ("winogrande", "boolq"):
        metrics += "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
    with open(os.path.join(folder, f"smoke_{task}.yaml"), "w") as f:
        f.write(f"task: smoke_{task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                f"    test: {os.path.join(folder, 'items.jsonl')}\ntest_split: test\noutput_type: multiple_choice\n"
                f"doc_to_text: \"{{{{q}}}}\"\ndoc_to_target: a\ndoc_to_choice: c\nmetric_list:\n{metrics}")
PY
    tasks="smoke_arc_challenge:arc_challenge,smoke_arc_easy:arc_easy,smoke_piqa:piqa,smoke_hellaswag:hellaswag"
    tasks+=",smoke_openbookqa:openbookqa,smoke_winogrande:winogrande,smoke_boolq:boolq"
    "$PYTHON" "$HERE/evaluate.py" "${checkpoints[@]}" --tasks "$tasks" --include_path "$smoke/tasks" \
        --device cpu --batch_size 4 "${extra[@]}" > "$smoke/evaluate.log" 2>&1 \
        || { echo "error: lm-eval failed; see $smoke/evaluate.log" >&2; exit 1; }
    echo "Table 3 (SMOKE: tiny models after 4 updates, stand-in tasks; the numbers mean nothing)"
    exec "$PYTHON" "$HERE/table.py" "$smoke"
fi

checkpoints=("$@")
if (( ${#checkpoints[@]} == 0 )); then
    for run in "$OUT"/table2_adam/llama_1b-*-"$SEED_GLOB"; do
        [[ -d "$run" ]] || continue
        latest="$(ls -d "$run"/model_[0-9]* 2>/dev/null | sort -t_ -k2 -n | tail -1)"
        [[ -n "$latest" ]] && checkpoints+=("$latest")
    done
fi
(( ${#checkpoints[@]} )) || { echo "error: no checkpoints given and none under $OUT/table2_adam/llama_1b-*-$SEED_GLOB; pass model folders" >&2; exit 2; }
"$PYTHON" "$HERE/evaluate.py" "${checkpoints[@]}" --dtype "$DTYPE" --batch_size "$BATCH" --task_set "$TASK_SET" "${extra[@]}"
folders=()
for c in "${checkpoints[@]}"; do folders+=("$(dirname "$c")"); done
"$PYTHON" "$HERE/table.py" "${folders[@]}"
