#!/usr/bin/env bash
# Every GPU measurement of the library in one script, each part with its own time limit, for a
# lent GPU machine's short session. Results go to $OUT (or ./gpu-checks). Parts and limits:
# tests 120 s, bench 300 s, profile 60 s, smoke 480 s. A session of 15 minutes (start included)
# holds "tests bench profile" (8 min at most) or "smoke", not both: run them in that order over
# two sessions. None of it has run yet (no GPU was lent to the session that wrote it).
#
#   bash benchmarks/gpu_checks.sh tests bench profile
#   bash benchmarks/gpu_checks.sh smoke
#
# The smoke reads and writes NIfTI: install nibabel first where it is missing, e.g. from a wheel
# carried with the checkout: pip install --no-index --find-links wheels nibabel
set -u
out="${OUT:-gpu-checks}"
mkdir -p "$out"
if [ $# -eq 0 ]; then parts=(tests bench profile smoke); else parts=("$@"); fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
for part in "${parts[@]}"; do
  case "$part" in
    tests)    # the CUDA cells of the device-parametrised tests
      timeout 120 python -m pytest -q -p no:cacheprovider -k cuda tests > "$out/tests.txt" 2>&1; rc=$? ;;
    bench)    # fp32 eager against the new defaults (compile and workers as a long run resolves them)
      timeout 300 python benchmarks/pretrain.py --size 128 --batch 8 --full --device cuda --steps 30 \
        --configs fp32 defaults > "$out/pretrain.txt" 2>&1; rc=$? ;;
    profile)  # why relative patch location is slower in bf16 + channels-last than in fp32
      timeout 60 python benchmarks/profile_step.py --task rpl --device cuda > "$out/profile_rpl.txt" 2>&1; rc=$? ;;
    smoke)    # the paper configuration end to end, shortened (must finish within 8 minutes)
      timeout 480 python benchmarks/paper_smoke.py --device cuda --output /tmp/paper-smoke \
        > "$out/paper_smoke.txt" 2>&1; rc=$?
      cp /tmp/paper-smoke/smoke.json "$out/" 2>/dev/null ;;
    *) echo "unknown part $part (tests, bench, profile, smoke)"; exit 2 ;;
  esac
  echo "$part: exit $rc ($(date +%T))" | tee -a "$out/summary.txt"
done
