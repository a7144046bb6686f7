#!/bin/sh
# Installs the Debian packages the build, the tests and the demo need when
# they are missing (as root), or says what to install (otherwise).
PKGS="build-essential pkg-config lua5.4 liblua5.4-dev lua-busted lua-cjson libcurl4-openssl-dev
      libssl-dev openssl curl nginx libnginx-mod-http-lua luarocks lua-check
      luajit2 libluajit2-5.1-dev redis-server lua-redis lua-nginx-redis lua-ldoc lua-discount
      git unzip lua-luv lua-cqueues libfaketime wrk"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
  echo "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq $missing >/dev/null
else
  echo "missing Debian packages:$missing"
  echo "run: sudo apt-get install -y$missing"
  exit 1
fi
