#!/usr/bin/env bash
# Prints the path of an earlier release's `orrery` binary, building it when missing:
#
#   scripts/ensure-release.sh          the previous release (the last of scripts/releases.txt)
#   scripts/ensure-release.sh SCHEMA   the release whose newest migration was SCHEMA
#
# Built (debug profile) from `git archive` of its commit, so no worktree is left behind,
# into .tools/releases/orrery-schema-SCHEMA; the releases share one target directory there,
# so their common dependencies build once. Progress goes to stderr.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
releases=$(grep -v '^#' scripts/releases.txt)
schema=${1:-$(echo "$releases" | tail -1 | cut -d' ' -f1)}
commit=$(echo "$releases" | awk -v s="$schema" '$1 == s {print $2}')
if [ -z "$commit" ]; then
    echo "no release of schema $schema in scripts/releases.txt" >&2
    exit 2
fi
dir="$root/.tools/releases"
bin="$dir/orrery-schema-$schema"
if [ ! -x "$bin" ]; then
    echo "building the release of schema $schema ($commit) into $bin" >&2
    mkdir -p "$dir"
    src=$(mktemp -d "$dir/src.XXXXXX")
    trap 'rm -rf "$src"' EXIT
    # A shallow clone (as some CI systems make) lacks the release's commit: fetch the history.
    if ! git -C "$root" cat-file -e "$commit^{commit}" 2>/dev/null; then
        echo "fetching the history to find $commit" >&2
        git -C "$root" fetch --quiet --unshallow 2>/dev/null || git -C "$root" fetch --quiet origin "$commit"
    fi
    git -C "$root" archive "$commit" | tar -x -C "$src"
    # The archive's files carry the commit's time, older than the last build's output in the
    # shared target directory, which cargo would then take for this release's.
    find "$src" -exec touch {} +
    (cd "$src" && CARGO_TARGET_DIR="$dir/target" cargo build --locked --quiet --bin orrery)
    cp "$dir/target/debug/orrery" "$bin.tmp"
    mv "$bin.tmp" "$bin"
fi
echo "$bin"
