#!/usr/bin/env bash
# Prints the Python of the project's own virtual environment, .tools/venv, once the tools
# pinned in scripts/py-tools.txt (dependencies: scripts/py-tools.lock) are installed there.
#
# Whatever the machine already has is never used: callers run the tools as
# `"$py" -I "$venv/bin/<tool>"` (isolated: no PYTHONPATH, no user site-packages, and a venv
# sees no system site-packages), and the check below asks that same interpreter which
# versions it finds, so what was checked is what runs. A pin that changes, or a venv whose
# base Python went away, is rebuilt. `--lock` rewrites py-tools.lock from a fresh install.
# Progress goes to stderr.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.tools/venv"
py="$venv/bin/python"
reqs="$root/scripts/py-tools.txt"
lock="$root/scripts/py-tools.lock"
stamp="$venv/.pins"

# Exit 0 when $py runs and holds exactly the pinned version of every tool and dependency.
pinned() {
  [ -x "$py" ] && [ -f "$stamp" ] && cat "$reqs" "$lock" 2>/dev/null | cmp -s - "$stamp" &&
    "$py" -I - "$reqs" "$lock" <<'PY' 2>/dev/null
import sys, importlib.metadata as md
for path in sys.argv[1:]:
    for line in open(path):
        line = line.split("#")[0].strip()
        if "==" not in line:
            continue
        name, version = (part.strip() for part in line.split("==", 1))
        if md.version(name) != version:
            sys.exit(f"{name} {md.version(name)} is not the pinned {version}")
PY
}

install() {
  local constraints=()
  [ "${1:-}" = fresh ] || constraints=(-c "$lock")
  echo "installing the pinned Python test tools into .tools/venv (PyPI)..." >&2
  rm -rf "$venv"
  mkdir -p "$root/.tools"
  base=$(command -v python3 || true)
  [ -n "$base" ] || { echo "python3 (3.9 or later) is needed for the test tools" >&2; exit 1; }
  if ! "$base" -m venv "$venv" >&2 2>/dev/null; then
    # Debian's own python3 keeps venv (and ensurepip) in a separate package.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      rm -rf "$venv"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >&2 ||
        { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >&2; }
      "$base" -m venv "$venv" >&2
    else
      echo "$base cannot make a virtual environment: install python3-venv" >&2; exit 1
    fi
  fi
  "$py" -I -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r "$reqs" "${constraints[@]}" >&2
}

if [ "${1:-}" = --lock ]; then
  install fresh
  { echo "# Every package of .tools/venv, pinned: written by scripts/ensure-py-tools.sh --lock."
    "$py" -I -m pip freeze --disable-pip-version-check; } >"$lock"
  cat "$reqs" "$lock" >"$stamp"
  echo "wrote $lock" >&2
fi
if ! pinned; then
  install
  cat "$reqs" "$lock" >"$stamp"
  pinned || { echo ".tools/venv does not hold the pinned tools after installing them" >&2; exit 1; }
fi
echo "$py"
