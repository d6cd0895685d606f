#!/usr/bin/env bash
# Regenerates tests/fixtures/upgrade/: a database written by each earlier schema version's
# own code, from the same JetStream store of traffic, for `upgrade::every_earlier_schema_*`.
#
# Builds each release of scripts/releases.txt (once: scripts/ensure-release.sh), then runs the
# ignored test `upgrade::regenerate_upgrade_fixtures`, which writes the store and runs each
# release on a copy of it, checking that each wrote its own schema.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
grep -v '^#' scripts/releases.txt | while read -r schema commit; do
    ln -s "$(scripts/ensure-release.sh "$schema")" "$bin/orrery-schema-$schema"
    echo "$schema:$commit" >> "$bin/releases"
done
ORRERY_OLD_RELEASES="$bin" ORRERY_NATS_SERVER="$(scripts/ensure-nats-server.sh)" \
    cargo test --test it -- --ignored --exact upgrade::regenerate_upgrade_fixtures --nocapture
