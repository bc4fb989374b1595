#!/usr/bin/env bash
# The main job: base model and retrain oracle, judge, a briefly trained PPO agent, and the benchmark of
# base / oracle / static λ / neyman / PPO on the default task, with paired statistics.
#
#   bash run_main_job.sh [PRESET] [OUT]        PRESET: test, cpu (default) or paper (GPU); OUT: results/main_<preset>
#
# Environment: SEEDS (evaluation seeds, default 3), PPO_STEPS (PPO env steps, default by preset),
# REFERENCE (the paired comparisons' reference, default static:0.5; the full benchmark chooses the best
# static λ on tuning seeds instead, see README "Evaluation").
# Independent stages run two at a time, one torch thread each (2 cores). Every stage is cached or
# resumable, so running it again picks up where it stopped. Ends with <OUT>/eval/report.md.
set -euo pipefail
cd "$(dirname "$0")"

PRESET=${1:-cpu}
OUT=${2:-results/main_${PRESET}}
SEEDS=${SEEDS:-3}
REFERENCE=${REFERENCE:-static:0.5}
case "$PRESET" in
  test) DEFAULT_PPO_STEPS=64 ;;
  cpu) DEFAULT_PPO_STEPS=300 ;;     # 5 episodes of 60 steps: a brief run, not a converged agent
  *) DEFAULT_PPO_STEPS=30000 ;;     # the paper preset's n_timesteps in agents/hyperparams/ppo.yml
esac
PPO_STEPS=${PPO_STEPS:-$DEFAULT_PPO_STEPS}
RUN="$OUT/policies/ppo/${PRESET}_0"
EVAL="$OUT/eval"
if [ "$PRESET" = paper ]; then THREADS=${OMP_NUM_THREADS:-4}; else THREADS=1; fi
export OMP_NUM_THREADS=$THREADS
mkdir -p "$OUT/logs"

stage() { printf '\n==> [%s, %d s so far] %s\n' "$(date +%H:%M:%S)" "$SECONDS" "$*"; }
# Runs "$@" in the background, its output in $OUT/logs/$1.log; `wait_all` fails if any failed.
PIDS=()
background() { local name=$1; shift; "$@" > "$OUT/logs/$name.log" 2>&1 & PIDS+=("$!"); echo "   $name: $OUT/logs/$name.log"; }
wait_all() {
  local failed=0
  for pid in "${PIDS[@]}"; do wait "$pid" || failed=1; done
  PIDS=()
  if [ "$failed" = 1 ]; then echo "a stage failed: see $OUT/logs/" >&2; exit 1; fi
}

stage "1/4 base model and retrain oracle, in parallel (cached after the first run)"
background pretrain_base scripts/python -m unlearn_env.pretrain --preset "$PRESET"
background pretrain_oracle scripts/python -m unlearn_env.pretrain --preset "$PRESET" --oracle
wait_all

stage "2/4 judge and validator, and PPO for $PPO_STEPS steps -> $RUN, in parallel"
background judge scripts/python -m evaluation.judge --preset "$PRESET"
if [ -e "$RUN/config.json" ]; then
  background ppo scripts/python train_policy.py --algo ppo --preset "$PRESET" --seed 0 --out "$OUT/policies" \
    --total-timesteps "$PPO_STEPS" --resume --no-progress-bar
else
  background ppo scripts/python train_policy.py --algo ppo --preset "$PRESET" --seed 0 --out "$OUT/policies" \
    --total-timesteps "$PPO_STEPS" --no-progress-bar
fi
wait_all

# Two evaluation processes on one --out with disjoint methods (the second names one of its own as its
# reference, so that it does not run the first's); the last call finds every run recorded and only
# builds the tables and the report from the records.
COMMON=(--preset "$PRESET" --seeds "$SEEDS" --out "$EVAL" --frontier off --no-progress)
stage "3/4 evaluation over $SEEDS seeds, two processes"
background eval_a scripts/python evaluate.py "${COMMON[@]}" --methods "base,oracle" --reference "$REFERENCE"
background eval_b scripts/python evaluate.py "${COMMON[@]}" --methods "neyman,ppo:$RUN" --reference neyman
wait_all

stage "4/4 report"
scripts/python evaluate.py "${COMMON[@]}" --methods "base,oracle,neyman,ppo:$RUN" --reference "$REFERENCE"

stage "done: $EVAL/report.md"
