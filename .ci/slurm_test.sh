#!/usr/bin/env bash
# Start (or reuse) the single-node test cluster, then run the SLURM tests against it.
#   bash .ci/slurm_test.sh [extra pytest args]
# Prints how long the cluster took to come up and how long the tests took.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin

start=$SECONDS
# CI leaves no daemons behind; a developer's cluster stays up for the next run.
if [[ ${CI:-} == true ]]; then trap 'bash .ci/slurm_setup.sh --stop' EXIT; fi
bash .ci/slurm_setup.sh
echo "slurm_test: cluster up in $((SECONDS - start)) s"

start=$SECONDS
rc=0
PATH=$PWD/$BIN:$PATH "$BIN/pytest" -q -m slurm tests/test_slurm.py "$@" || rc=$?
echo "slurm_test: tests took $((SECONDS - start)) s"
exit "$rc"
