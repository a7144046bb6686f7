#!/bin/sh
# Makes a release's rockspec and source rock from the scm rockspec.
#
#   tools/release.sh VERSION            (make release VERSION=x.y.z)
#       checks that src/nomba.h, the first heading of CHANGELOG.md and the git
#       tag vVERSION (on HEAD, with a clean tree) all say VERSION, then writes
#       build/release/nomba-oauth-VERSION-1.rockspec (source.url from the scm
#       rockspec's homepage, source.tag vVERSION), lints it and packs
#       build/release/nomba-oauth-VERSION-1.src.rock from the tagged commit.
#   tools/release.sh --lint             (make rock)
#       writes the rockspec the current version would get, and lints it.
set -eu
cd "$(dirname "$0")/.."

die() { echo "release: $*" >&2; exit 1; }

SCM=rockspec/nomba-oauth-scm-1.rockspec
lint_only=0
if [ "${1:-}" = "--lint" ]; then
  lint_only=1
  VERSION=$(sed -n 's/^#define NOMBA_VERSION *"\(.*\)"$/\1/p' src/nomba.h)
else
  VERSION=${1:-}
fi
echo "$VERSION" | grep -Eq '^[0-9]+\.[0-9]+\.[0-9]+$' || die "VERSION must look like 1.2.3 (got '$VERSION')"

homepage=$(sed -n 's/^ *homepage = "\(.*\)",$/\1/p' "$SCM")
[ -n "$homepage" ] || die "$SCM has no homepage"
tag="v$VERSION"
out=build/release
# everything is made in a temporary directory and moved to build/release only
# once the release is checked and packed: a refused release leaves nothing
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
spec="$work/nomba-oauth-$VERSION-1.rockspec"

# the scm rockspec with the version, the release's source and its tag
sed -e "s/^version = \"scm-1\"/version = \"$VERSION-1\"/" \
    -e "s|^  url = \"git+https://.*\",\$|  url = \"git+$homepage.git\",\n  tag = \"$tag\",|" \
    "$SCM" > "$spec"
grep -q "^version = \"$VERSION-1\"" "$spec" && grep -q "^  tag = \"$tag\"," "$spec" ||
  die "could not derive $spec from $SCM"
luarocks lint "$spec" || die "luarocks lint $spec failed"
if [ "$lint_only" = 1 ]; then
  echo "release: the rockspec of $VERSION lints"
  exit 0
fi

# every place that names the version agrees
code=$(sed -n 's/^#define NOMBA_VERSION *"\(.*\)"$/\1/p' src/nomba.h)
[ "$code" = "$VERSION" ] || die "src/nomba.h says $code, not $VERSION"
first=$(grep -m1 '^## ' CHANGELOG.md || true)
echo "$first" | grep -Eq "^## $VERSION( \([0-9]{4}-[0-9]{2}-[0-9]{2}\))?\$" ||
  die "the first heading of CHANGELOG.md is '$first', not '## $VERSION (YYYY-MM-DD)'"
[ -z "$(git status --porcelain)" ] || die "the working tree has uncommitted changes"
git rev-parse -q --verify "refs/tags/$tag" >/dev/null || die "there is no tag $tag (git tag -a $tag)"
[ "$(git rev-parse "$tag^{commit}")" = "$(git rev-parse HEAD)" ] || die "the tag $tag is not on HEAD"

# the source rock: packed from this repository at the tag, then given the
# published rockspec (luarocks pack fetches source.url, which is offline here)
pack="$work/pack"
mkdir "$pack"
sed "s|^  url = \"git+https://.*\",\$|  url = \"git+file://$(pwd)\",|" "$spec" > "$pack/$(basename "$spec")"
(cd "$pack" && luarocks pack "$(basename "$spec")" >/dev/null) || die "luarocks pack failed"
rock="nomba-oauth-$VERSION-1.src.rock"
cp "$spec" "$pack/$(basename "$spec")"
(cd "$pack" && zip -q "$rock" "$(basename "$spec")")
mkdir -p "$out"
cp "$spec" "$out/"
cp "$pack/$rock" "$out/$rock"
echo "release: $out/$(basename "$spec")"
echo "release: $out/$rock ($(wc -c < "$out/$rock") bytes); publish with: luarocks upload $out/$(basename "$spec")"
