#!/usr/bin/env bash
# Build the Debian package the Debian way (debian/, dpkg-buildpackage) from a clean copy of this tree, so
# that the build sees what the repository holds and nothing it left behind (caches, an older build).
#   packaging/build-deb.sh [OUTPUT_DIRECTORY]     (default: dist/)
# Writes the .deb, the source package (.dsc, .tar.xz) and the .changes into OUTPUT_DIRECTORY and prints
# the .deb's path; dpkg-buildpackage's own output goes to standard error. Needs the build dependencies:
#   apt-get build-dep ./
# Check the result with: lintian --profile debian --fail-on error,warning OUTPUT_DIRECTORY/*.changes
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$repo/dist}" && cd "${1:-$repo/dist}" && pwd)
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/tgbackupd/__init__.py")
[ -n "$version" ] || { echo "build-deb: no __version__ in tgbackupd/__init__.py" >&2; exit 1; }
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
source="$stage/tgbackupd-$version"
mkdir "$source"

if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # What git tracks (as it is in the work tree), and nothing else: the source package is published
    # whole (3.0 native), so a local config.toml, token file or state database must never slip in.
    # A new file is built once `git add` has named it.
    (cd "$repo" && git ls-files -z --cached | tar --null -cf - -T -) \
        | tar -xf - -C "$source"
else  # an unpacked release archive holds nothing else
    tar -C "$repo" --exclude=./dist -cf - . | tar -xf - -C "$source"
fi

# Debian's own python3 and tools, as in a Debian build chroot: not a python3 another installation put
# first in PATH (pyenv, a virtualenv), which has neither Debian's build modules nor its libraries.
(cd "$source" && env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc) >&2
for built in "$stage"/tgbackupd_"$version"*; do
    cp "$built" "$out/"
done
echo "$out/tgbackupd_${version}_all.deb"
