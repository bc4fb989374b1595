#!/usr/bin/env bash
# The main job: base model, a briefly trained PPO agent, and the benchmark of base / static λ / VI / PPO.
#
#   bash run_main_job.sh [PRESET] [OUT]        PRESET: test, cpu (default) or paper (GPU); OUT: results/main_<preset>
#
# Environment: SEEDS (evaluation seeds, default 3), PPO_STEPS (PPO env steps, default by preset).
# Every stage is cached or resumable, so running it again picks up where it stopped.
# Ends with <OUT>/eval/report.md.
set -euo pipefail
cd "$(dirname "$0")"

PRESET=${1:-cpu}
OUT=${2:-results/main_${PRESET}}
SEEDS=${SEEDS:-3}
case "$PRESET" in
  test) DEFAULT_PPO_STEPS=64 ;;
  cpu) DEFAULT_PPO_STEPS=600 ;;     # 10 episodes of 60 steps: a brief run, not a converged agent
  *) DEFAULT_PPO_STEPS=30000 ;;     # the paper preset's n_timesteps in agents/hyperparams/ppo.yml
esac
PPO_STEPS=${PPO_STEPS:-$DEFAULT_PPO_STEPS}
RUN="$OUT/policies/ppo/${PRESET}_0"

stage() { printf '\n==> [%s, %d s so far] %s\n' "$(date +%H:%M:%S)" "$SECONDS" "$*"; }

stage "1/3 base model (cached after the first run)"
scripts/python -m unlearn_env.pretrain --preset "$PRESET"

stage "2/3 PPO for $PPO_STEPS steps -> $RUN"
if [ -e "$RUN/config.json" ]; then
  scripts/python train_policy.py --algo ppo --preset "$PRESET" --seed 0 --out "$OUT/policies" \
    --total-timesteps "$PPO_STEPS" --resume
else
  scripts/python train_policy.py --algo ppo --preset "$PRESET" --seed 0 --out "$OUT/policies" \
    --total-timesteps "$PPO_STEPS"
fi

stage "3/3 evaluation over $SEEDS seeds (the judge is trained first if missing)"
scripts/python evaluate.py --preset "$PRESET" --methods "base,static:0.5,vi,ppo:$RUN" --seeds "$SEEDS" --out "$OUT/eval"

stage "done: $OUT/eval/report.md"
