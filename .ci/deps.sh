#!/bin/sh
# Installs the Debian packages a make target needs when they are missing (as
# root), or says what to install (otherwise).
#   sh .ci/deps.sh demo   the build and the simulator (make demo, make, make env)
#   sh .ci/deps.sh docs   the API reference (make docs)
#   sh .ci/deps.sh deb    the Debian package (make deb)
#   sh .ci/deps.sh        everything the suite, the soak and the gates use
BUILD="build-essential pkg-config lua5.4 liblua5.4-dev lua-cjson libcurl4-openssl-dev libssl-dev openssl
       curl nginx libnginx-mod-http-lua"
DOCS="lua-ldoc lua-discount"
TEST="lua-busted lua-check luarocks luajit2 libluajit2-5.1-dev redis-server lua-redis lua-nginx-redis
      git unzip lua-luv lua-cqueues libfaketime wrk"
case "${1:-all}" in
  demo) PKGS="$BUILD" ;;
  docs) PKGS="$DOCS" ;;
  deb) PKGS="$BUILD debhelper dh-lua dpkg-dev fakeroot liblua5.1-0-dev liblua5.2-dev liblua5.3-dev git" ;;
  all) PKGS="$BUILD $DOCS $TEST" ;;
  *) echo "deps.sh: unknown set '$1' (demo, docs, deb or nothing for all)" >&2; exit 2 ;;
esac
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
