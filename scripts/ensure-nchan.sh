#!/usr/bin/env bash
# Prints the nginx that `orrery bench fanout --peer nchan` and its test drive: Debian's
# nginx-light at /usr/sbin/nginx with Debian's libnginx-mod-nchan, installed (as root) when
# missing. $ORRERY_NGINX, when set, is an explicit choice (its nchan module must then be
# given with --nchan-module where it is not Debian's). Another nginx on PATH is never picked
# up. The versions in use go to stderr, as does progress.
set -euo pipefail
bin=/usr/sbin/nginx
module=/usr/lib/nginx/modules/ngx_nchan_module.so
if [ -n "${ORRERY_NGINX:-}" ]; then
  [ -x "$ORRERY_NGINX" ] || { echo "ORRERY_NGINX=$ORRERY_NGINX is not an executable" >&2; exit 1; }
  echo "$ORRERY_NGINX"; exit 0
fi
installed() {
  command -v dpkg-query >/dev/null 2>&1 &&
    [ "$(dpkg-query -W -f='${Status}' nginx-light 2>/dev/null)" = "install ok installed" ] &&
    [ "$(dpkg-query -W -f='${Status}' libnginx-mod-nchan 2>/dev/null)" = "install ok installed" ] &&
    [ -x "$bin" ] && [ -f "$module" ]
}
if ! installed; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's nginx-light and libnginx-mod-nchan for the fan-out comparison..." >&2
    export DEBIAN_FRONTEND=noninteractive
    pkgs=(nginx-light libnginx-mod-nchan)
    apt-get install -y -q "${pkgs[@]}" >&2 || { apt-get update -q >&2 && apt-get install -y -q "${pkgs[@]}" >&2; }
  fi
  installed || {
    echo "the nchan comparison needs Debian's nginx-light and libnginx-mod-nchan (as root: apt-get install nginx-light libnginx-mod-nchan), or ORRERY_NGINX set to an nginx" >&2
    exit 1
  }
fi
echo "using Debian's nginx-light $(dpkg-query -W -f='${Version}' nginx-light), libnginx-mod-nchan $(dpkg-query -W -f='${Version}' libnginx-mod-nchan)" >&2
echo "$bin"
