#!/usr/bin/env bash
# World-v2 pretraining, prepared for ONE device call (issue 16). Not run yet: no GPU has been lent.
#
#   device run (timeout_s 600):  bash routerlens_interp/toy/world_v2_gpu.sh
#   then, while the machine is still warm (it is given back 30 s after a call):
#                                 PART=2 bash routerlens_interp/toy/world_v2_gpu.sh
#
# Five seeds pretrain side by side on the one GPU (a 4 M-parameter model leaves it mostly idle; the
# v1 sweep ran 2-3 variants per H100). Each uses the shipped model's stage-1 recipe (recipe.json →
# stages[0]) with --world v2, one stage, --auto-minutes so the learning rate anneals inside the time.
# Files back from a call are limited to 8 files of 16 MiB (64 MiB in all) and a model is 17 MB in
# fp32, so each model travels as a tar split in two parts: PART=1 returns the first two seeds plus
# sweep.log and ranking.json (6 files), PART=2 the other three seeds (6 files). Reassemble here with
#   cat S.part-* > S.tar && tar xf S.tar
# then, on CPU here: `routerlens knockout --model DIR --data toy2-open --limit 150` (reading check:
# layer 0 alone ≤ 20 points, some layer ≥ 1 ≥ 30 points) and only then `routerlens demo --model DIR`.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/v2out}
ROOT=/tmp/v2runs
SEEDS=${SEEDS:-"826 1 2 3 4"}
MINUTES=${MINUTES:-6.5}
mkdir -p "$OUT" "$ROOT"
if [ "${PART:-1}" = 1 ]; then
  common="--device cuda --batch-size 256 --lr 0.002 --warmup 300 --weight-decay 0.05 --hidden 192 --layers 6 \
--heads 6 --experts 64 --top-k 8 --intermediate 12 --tie 1 --aux-coef 0.01 --answer-weight 3.0 --p-present 0.8 \
--reading-warmup 0.1 --read-max-facts 4 --mix memory=0.22,bio=0.06,read=0.42,known=0.18,known_new=0.12 \
--eval-every 400 --eval-n 200 --ckpt-every 500 --workers 2 --final-eval-n 200 --world v2 \
--auto-minutes $MINUTES --max-minutes $(python3 -c "print($MINUTES + 0.7)")"
  variants=()
  for s in $SEEDS; do variants+=("s$s:--seed $s"); done
  PYTHONUNBUFFERED=1 python3 -m routerlens_interp.toy.sweep --root "$ROOT" --common "$common" "${variants[@]}" \
    | tee "$OUT/sweep.log"
  cp "$ROOT/ranking.json" "$OUT/" 2>/dev/null || true
  for s in $SEEDS; do  # the model, tokenizer, config, recipe and log; not the training checkpoint
    (cd "$ROOT" && tar cf "s$s.tar" "s$s"/model.safetensors "s$s"/*.json "s$s"/log.jsonl 2>/dev/null || true)
  done
fi
set -- $SEEDS
if [ "${PART:-1}" = 1 ]; then pick="$1 $2"; else shift 2; pick="$*"; fi
for s in $pick; do
  (cd "$ROOT" && split -b 15M "s$s.tar" "$OUT/s$s.part-")
done
ls -la "$OUT"
