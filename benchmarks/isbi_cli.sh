#!/usr/bin/env bash
# End-to-end CLI check on ISBI 2012 (slices 0-14 train, 15-19 held out), CPU, a few minutes.
#   bash benchmarks/isbi_cli.sh [MINUTES] [SIZE]
set -euo pipefail
cd "$(dirname "$0")/.."
MIN=${1:-5}
SIZE=${2:-small}
SHARED=${LAZYLABELS_SHARED_DATA:-../shared/data}
W=benchmarks/work/isbi-cli
rm -rf "$W" && mkdir -p "$W/val/images"
lazylabels -q simulate "$SHARED/isbi2012-dev" --out "$W/lazy" --strong-fraction 0.1 --seed 0
for s in 15 16 17 18 19; do
  mv "$W/lazy/images/slice_$s.png" "$W/val/images/"
  rm -f "$W"/lazy/{detection,separation,segmentation}/slice_$s.png
done
time lazylabels -q train "$W/lazy" --out "$W/model" --minutes "$MIN" --size "$SIZE" --val-every 1000000
time lazylabels -q predict "$W/model" "$W/val/images" --out "$W/pred" --no-probabilities
lazylabels -q evaluate "$W/pred" "$SHARED/isbi2012-dev/masks" --json "$W/scores.json"
