#!/usr/bin/env bash
# A real upgrade: finish the demo's submission with an earlier release, then dry-run this checkout
# on that project. Prints what this checkout plans; exits 1 when it plans any job. Nothing may be
# planned unless a stage's RESULTS_VERSION was raised since (then that stage and what follows it).
#
#   tests/upgrade_check.sh PREVIOUS_RELEASE [WORK_FOLDER]      # a tag or commit; a few CPU minutes
#
# The earlier release runs from a git worktree with its own imageclf package first on PYTHONPATH;
# the project is a folder of its own, so each release finds its own profiles/default.
set -euo pipefail
previous=${1:?usage: tests/upgrade_check.sh PREVIOUS_RELEASE [WORK_FOLDER]}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${2:-$(mktemp -d)}
mkdir -p "$work" && work=$(cd "$work" && pwd)
release="$work/release"
project="$work/project"
git -C "$repo" worktree add --detach "$release" "$previous" >/dev/null
trap 'git -C "$repo" worktree remove --force "$release"' EXIT
mkdir -p "$project"
cd "$project"
PYTHONPATH="$release/workflow" snakemake -s "$release/Snakefile" --cores 2 results/submission.csv \
    >"$work/previous_release.log" 2>&1 || { tail -30 "$work/previous_release.log"; exit 2; }
snakemake -s "$repo/Snakefile" -n results/submission.csv >"$work/dry_run.log" 2>&1 \
    || { tail -30 "$work/dry_run.log"; exit 2; }
if grep -q "^Job stats:" "$work/dry_run.log"; then
    sed -n '/^Job stats:/,/^Reasons:/p' "$work/dry_run.log"
    grep "reason:" "$work/dry_run.log" | sort | uniq -c
    echo "upgrade from $previous plans the jobs above ($work/dry_run.log)"
    exit 1
fi
echo "upgrade from $previous plans nothing"
