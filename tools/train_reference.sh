#!/usr/bin/env bash
# The reference policy from scratch: demonstrations, then five training stages.
#
#   tools/train_reference.sh [WORK_DIR]      (default runs/reference; run from the repo root
#                                             with the venv active, or through `make train`)
#
# 1. records the demonstrations and the excursion bags of docs/training.md section 1 into
#    WORK_DIR/demos and WORK_DIR/demos_exc, unless they are there already (JOBS bags at a
#    time, default one per core);
# 2. stage all: every weight of the PRESET (below) from a fresh initialisation, behaviour
#    cloning plus the pointer, attribute and localisation losses, word noise, token dropout
#    with half of it cut inside the decoder (WORK_DIR/all);
# 3. stage pointer: the pointers' scoring weights alone on their labels (WORK_DIR/pointer);
# 4. stage all2: every weight again, from the pointer stage, at half the learning rate
#    (WORK_DIR/all2);
# 5. stage all3: every weight a third time, from all2, as all2 with another seed (WORK_DIR/all3);
# 6. stage head: the action head and geometry branch on the frozen all3 trunk's outputs, with
#    pre-decoder token dropout, tokens cut inside the decoder and head-state dropout
#    (WORK_DIR/head; the model is WORK_DIR/head/model).
#
# Each stage resumes where it stopped when WORK_DIR/STAGE/training_state.pt is there and its
# model is not complete yet, so an interrupted recipe continues with the same command. The
# settings are those of docs/training.md, "From scratch in one recipe", and its default preset
# and head length those of "A narrower trunk", which records what the result solves and how
# long each part took on the development machine (2-core CPU: 48 min, recording included).
# THREADS (default 2) sets the torch threads; DEVICE (default auto) the training device.
# EPISODES (default 100 a family a bag) and STEP_DIVISOR (default 1: every stage's steps are
# divided by it) shrink the recipe to a smoke run; the tests run it that way.
# PRESET (default sim-branch-narrow) names the model preset of every stage, HEAD_STEPS (default
# 20000) the head stage's steps; PRESET=sim-branch HEAD_STEPS=40000 is the full-width recipe of
# "From scratch in one recipe" (about three hours), sim-branch-lite that of "A lighter trunk".
set -euo pipefail

work=${1:-runs/reference}
threads=${THREADS:-2}
device=${DEVICE:-auto}
episodes=${EPISODES:-100}
divisor=${STEP_DIVISOR:-1}
preset=${PRESET:-sim-branch-narrow}
head_steps=${HEAD_STEPS:-20000}
if ! [[ $head_steps =~ ^[1-9][0-9]*$ ]]; then
    echo "error: HEAD_STEPS must be a positive whole number, not '$head_steps'" >&2
    exit 2
fi
# An unknown preset stops here, not after the bags are recorded.
python -c 'import sys; from vla_pruned_ros.model.presets import preset_config
try:
    preset_config(sys.argv[1])
except ValueError as error:
    sys.exit(f"error: PRESET: {error}")' "$preset"
export MUJOCO_GL=${MUJOCO_GL:-egl}
mkdir -p "$work"
log="$work/recipe_times.txt"

stamp() { date +%s; }
started=$(stamp)

timed() {  # timed NAME COMMAND...: run it, append its wall time to the log
    local name=$1 t0
    shift
    t0=$(stamp)
    echo "== $name: $*"
    "$@"
    echo "$name $(( $(stamp) - t0 )) s" | tee -a "$log"
}

record() {  # record DIR SHARD [EXTRA...]: one bag of 100 train-split episodes per family
    local dir=$1 shard=$2
    shift 2
    [ -f "$dir/train_$shard/metadata.yaml" ] && return 0
    rm -rf "$dir/train_$shard"
    vla-pruned-ros sim record --out "$dir/train_$shard" --episodes "$episodes" \
        --seed $((shard * 100)) --image-size 96 96 --points-stride 2 --noise 0.004 \
        --split train "$@"
}

# A stage is done when its log has the final step's validation loss.
stage_done() { grep -q "\"step\": $2,.*val_loss" "$work/$1/log.jsonl" 2>/dev/null; }

# A stage on disk that started from another stage (a run of an older recipe: before all3, the
# head started from all2) is not this recipe's: stop rather than skip or resume it.
check_source() {  # check_source NAME FROM
    local log="$work/$1/log.jsonl" first
    [ -f "$log" ] || return 0
    first=$(head -n 1 "$log")
    # the stage's name, not the whole path: the same WORK_DIR may be spelt another way (or
    # not at all, by a stage run by hand from inside it)
    if [ -n "$2" ] && [[ "$first" == *'"init_from": "'*"/$2/model\""* ||
            "$first" == *'"init_from": "'"$2/model\""* ]]; then
        return 0
    elif [ -z "$2" ] && [[ "$first" != *'"init_from"'* ]]; then
        return 0
    fi
    echo "error: $work/$1 did not start from ${2:-scratch} (its log begins: ${first:0:120});" \
        "it is an older recipe's: move it away or give another WORK_DIR" >&2
    exit 1
}

# A stage made with another preset (another PRESET, or the default) is not this run's either.
check_preset() {  # check_preset NAME
    local config="$work/$1/model/config.json"
    [ -f "$config" ] || return 0
    grep -q "\"preset\": *\"$preset\"" "$config" && return 0
    echo "error: $work/$1 is not a $preset model ($(grep -o '"preset": *"[^"]*"' "$config"));" \
        "move it away or give another WORK_DIR" >&2
    exit 1
}

# A stage begun for another number of steps (another HEAD_STEPS) would be resumed into a run
# of neither length: stop instead.
check_steps() {  # check_steps NAME STEPS
    local state="$work/$1/training_state.pt" planned
    [ -f "$state" ] || return 0
    planned=$(python -c 'import sys, torch
state = torch.load(sys.argv[1], weights_only=False, map_location="cpu")
print(state["config"]["steps"])' "$state")
    [ "$planned" = "$2" ] && return 0
    echo "error: $work/$1 was trained for $planned steps, not $2;" \
        "move it away or give another WORK_DIR" >&2
    exit 1
}

stage() {  # stage NAME STEPS FROM ARGS...: FROM is the stage it starts from ('' = scratch)
    local name=$1 steps=$(( $2 / divisor )) from=$3
    shift 3
    check_source "$name" "$from"
    check_preset "$name"
    check_steps "$name" "$steps"
    if stage_done "$name" "$steps"; then
        echo "== $name: done already ($work/$name/model)"
        return 0
    fi
    local start=()
    if [ -f "$work/$name/training_state.pt" ]; then
        start=(--resume)
    elif [ -n "$from" ]; then
        start=(--init-from "$work/$from/model")
    fi
    timed "$name" vla-pruned-ros train --data "$work/demos" "$work/demos_exc" \
        --preset "$preset" --out "$work/$name" --steps "$steps" "${start[@]}" \
        --cache-dir "$work/cache" --threads "$threads" --device "$device" \
        --checkpoint-every 250 "$@"
}

# The six bags, JOBS at a time (default: one per core); each simulator runs on one thread.
jobs=${JOBS:-$(nproc 2>/dev/null || echo 2)}
t0=$(stamp)
pids=()
for spec in 'demos 0' 'demos 1' 'demos 2' 'demos_exc 6 --excursions 0.1' \
        'demos_exc 7 --excursions 0.1' 'demos_exc 8 --excursions 0.1'; do
    # shellcheck disable=SC2086  # spec is split on purpose: DIR SHARD [FLAGS]
    set -- $spec
    dir=$1
    shift
    OMP_NUM_THREADS=1 record "$work/$dir" "$@" &
    pids+=($!)
    if [ "${#pids[@]}" -ge "$jobs" ]; then
        wait "${pids[0]}"
        pids=("${pids[@]:1}")
    fi
done
for pid in "${pids[@]}"; do
    wait "$pid"
done
echo "record $(( $(stamp) - t0 )) s" | tee -a "$log"

# The three every-weight stages differ only in where they start, the learning rate and the seed.
every_weight=(--batch-size 32 --aux-weight 1.0 --word-noise 0.5 --cut-share 0.5)
stage all 1500 '' "${every_weight[@]}" --lr 6e-4 --seed 100
stage pointer 3000 all --stage pointer --batch-size 64 --lr 1e-3 \
    --word-noise 0.5 --seed 101
stage all2 1500 pointer "${every_weight[@]}" --lr 3e-4 --seed 103
stage all3 1500 all2 "${every_weight[@]}" --lr 3e-4 --seed 104
stage head "$head_steps" all3 --stage head --head-views 2 \
    --head-cut-views 2 --head-state-dropout 0.5 --batch-size 256 --lr 1e-3 --seed 102 \
    --checkpoint-every 2500

echo "recipe: $(( $(stamp) - started )) s in all; the model is $work/head/model" | tee -a "$log"
