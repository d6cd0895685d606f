#!/usr/bin/env bash
# Regenerates tests/fixtures/upgrade/: a database written by each earlier schema version's
# own code, from the same JetStream store of traffic, for `upgrade::every_earlier_schema_*`.
#
#   scripts/upgrade-fixtures.sh            build the old releases (once), then regenerate
#   scripts/upgrade-fixtures.sh --build    only build them
#
# Each old release is built from `git archive` of the last commit of main whose newest
# migration was that schema version (no worktree is left behind), into one shared target
# directory so their common dependencies build once. Then an ignored test,
# `upgrade::regenerate_upgrade_fixtures`, writes the store and runs each release on a copy.
set -euo pipefail
cd "$(dirname "$0")/.."

# schema version:commit, oldest first. Schema 6 never was the newest of a commit on main.
RELEASES="1:0b9fbbe 2:dd0cd95 3:dc15ce4 4:b4d0376 5:a59e7b9 7:17ac402 8:a52530f 9:aff83a9 10:9cd41ba"
WORK=${ORRERY_UPGRADE_WORK:-$PWD/target/upgrade-fixtures}
mkdir -p "$WORK/bin"
: > "$WORK/bin/releases.new"
for release in $RELEASES; do
    version=${release%%:*}
    commit=${release#*:}
    bin="$WORK/bin/orrery-schema-$version"
    echo "$release" >> "$WORK/bin/releases.new"
    if [ -x "$bin" ]; then
        continue
    fi
    echo "building schema $version ($commit)" >&2
    src="$WORK/src-$version"
    rm -rf "$src"
    mkdir -p "$src"
    git archive "$commit" | tar -x -C "$src"
    # The archive's files carry the commit's time: older than the last build's output in the
    # shared target directory, which cargo would then take for this release's.
    find "$src" -exec touch {} +
    (cd "$src" && CARGO_TARGET_DIR="$WORK/target" cargo build --locked --quiet --bin orrery)
    cp "$WORK/target/debug/orrery" "$bin"
    rm -rf "$src"
done
mv "$WORK/bin/releases.new" "$WORK/bin/releases"
if [ "${1:-}" = "--build" ]; then
    exit 0
fi

ORRERY_OLD_RELEASES="$WORK/bin" ORRERY_NATS_SERVER="$(scripts/ensure-nats-server.sh)" \
    cargo test --test it -- --ignored --exact upgrade::regenerate_upgrade_fixtures --nocapture
