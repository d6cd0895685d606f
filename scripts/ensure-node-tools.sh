#!/usr/bin/env bash
# Prints the directory of the project's own Node test tools, .tools/node, once the packages
# pinned in scripts/node-tools/package-lock.json (today: oidc-provider, a certified OpenID
# provider the auth tests run) are installed there with `npm ci`, exactly as locked.
#
# The tests run `.tools/node/node` (a link to the Node.js this script checked, 20 or later)
# and import the provider by its path under .tools/node/node_modules, so neither PATH nor
# NODE_PATH nor a global npm prefix can put another copy in its place. A lock that changes
# is installed again. Progress goes to stderr.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/.tools/node"
src="$root/scripts/node-tools"
stamp="$dir/.pins"

node_bin=${ORRERY_NODE:-/usr/bin/node}
if ! [ -x "$node_bin" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's nodejs and npm for the auth tests..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q nodejs npm >&2 || { apt-get update -q >&2 && apt-get install -y -q nodejs npm >&2; }
  fi
fi
[ -x "$node_bin" ] || { echo "the auth tests need Node.js 20 or later at $node_bin (or ORRERY_NODE)" >&2; exit 1; }
major=$("$node_bin" -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 20 ] || { echo "$node_bin is Node.js $major; the auth tests need 20 or later" >&2; exit 1; }
# npm's own script, run by the checked node: `npm` is `#!/usr/bin/env node`, which would run
# under whatever node comes first on PATH.
npm_cli=$(readlink -f "$(dirname "$node_bin")/npm" 2>/dev/null || true)
[ -f "$npm_cli" ] || npm_cli=$(readlink -f "$(command -v npm)" 2>/dev/null || true)
[ -f "$npm_cli" ] || { echo "npm is needed beside $node_bin" >&2; exit 1; }

installed() {
  [ -f "$stamp" ] && cat "$src/package.json" "$src/package-lock.json" | cmp -s - "$stamp" &&
    [ -f "$dir/node_modules/oidc-provider/lib/index.js" ] &&
    [ "$("$node_bin" -p "require('$dir/node_modules/oidc-provider/package.json').version")" = \
      "$("$node_bin" -p "require('$src/package.json').dependencies['oidc-provider']")" ]
}
if ! installed; then
  echo "installing the pinned Node test tools into .tools/node (npm registry)..." >&2
  rm -rf "$dir"
  mkdir -p "$dir"
  cp "$src/package.json" "$src/package-lock.json" "$dir/"
  (cd "$dir" && PATH="$(dirname "$node_bin"):$PATH" "$node_bin" "$npm_cli" ci --ignore-scripts \
    --no-audit --no-fund --loglevel=error >&2)
  cat "$src/package.json" "$src/package-lock.json" >"$stamp"
fi
ln -sfn "$node_bin" "$dir/node"
echo "using Node.js $("$node_bin" --version) and oidc-provider $("$node_bin" -p "require('$dir/node_modules/oidc-provider/package.json').version")" >&2
echo "$dir"
