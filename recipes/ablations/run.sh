#!/usr/bin/env bash
# Run a ready-made ablation grid and write its report to docs/results/GRID/.
#   bash recipes/ablations/run.sh consistency [extra nmt-sd-ablate flags, e.g. --seeds 1 --jobs 2]
# Grids: recipes/ablations/*.toml (each states its data, budget and variants). Runs go to
# checkpoints/ablations/GRID/VARIANT/seedS; rerunning skips finished runs and resumes others.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
GRID=${1:?usage: run.sh GRID [nmt-sd-ablate flags]}
shift
CONFIG="$REPO/recipes/ablations/$GRID.toml"
[[ -f "$CONFIG" ]] || { echo "run.sh: no grid $CONFIG (have: $(cd "$REPO/recipes/ablations" && ls *.toml | sed 's/.toml//' | tr '\n' ' '))" >&2; exit 2; }
cd "$REPO"
nmt-sd-ablate --config "$CONFIG" --save-root "${SAVE_ROOT:-checkpoints/ablations/$GRID}" \
  --report-dir "${REPORT_DIR:-docs/results/$GRID}" --title "Ablation: $GRID" "$@"
