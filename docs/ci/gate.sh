#!/usr/bin/env bash
# sparsebench regression gate for any CI system (or your laptop): measure a base commit and the
# working tree on this machine, interleaved, and exit 1 on a latency, size or memory regression.
#
#   docs/ci/gate.sh BASE_REF [MODEL] [extra `sparsebench measure` flags ...]
#   docs/ci/gate.sh origin/main models/lenet5_prune_l.pt --formats dense,csr --backends torch,scipy
#
# Run it from the head checkout with sparsebench installed from it (pip install -e .). The base
# commit is checked out into a temporary git worktree (removed on exit); its worker processes
# alternate with the head's (`measure --ab CHECKOUT`). Writes gate.md (Markdown for a PR
# comment; GATE_MARKDOWN=path to move it) and gate-ab.json (the raw samples; GATE_JSON=path).
# Exit codes: 0 pass, 1 regression, 2 bad input.
set -euo pipefail
base_ref=${1:?usage: gate.sh BASE_REF [MODEL] [extra measure flags]}
model=${2:-models/lenet5_prune_l.pt}
shift $(( $# >= 2 ? 2 : 1 ))
work=$(mktemp -d)
cleanup() { git worktree remove --force "$work/base" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

git worktree add --detach "$work/base" "$base_ref" >/dev/null
# compile both sides' kernels now, not inside the first timed worker (no compiler: skipped)
python -c "from sparsebench import native; native.available()" || true
(cd "$work/base" && python -c "from sparsebench import native; native.available()") || true

# --force: this script owns gate-ab.json and gate.md and rewrites them on every run
sparsebench measure "$model" --ab "$work/base" --ab-rounds 16 --data none \
  --json "${GATE_JSON:-gate-ab.json}" --force "$@"
sparsebench compare "${GATE_JSON:-gate-ab.json}" --markdown "${GATE_MARKDOWN:-gate.md}" --force
