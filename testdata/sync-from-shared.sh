#!/usr/bin/env bash
# Refreshes testdata/ from the team's hand-over folder (../shared beside the repository, or the
# folder given as $1) and checks every file against SHA256SUMS afterwards. Tests never read
# ../shared: this script is how an update arrives. Run it, review `git diff`, commit.
#
#   testdata/sync-from-shared.sh [SHARED_DIR]     # copy, then verify
#   testdata/sync-from-shared.sh --check          # verify the committed files only
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ "${1:-}" = "--check" ]; then
  (cd "$here/reference" && sha256sum --quiet -c ../SHA256SUMS)
  echo "testdata/reference matches SHA256SUMS"
  exit 0
fi
shared="${1:-$here/../../shared}"
if [ ! -d "$shared/reference" ]; then
  echo "error: no reference folder at $shared/reference (pass the hand-over folder as \$1)" >&2
  exit 1
fi
rm -rf "$here/reference.new"
cp -r "$shared/reference" "$here/reference.new"
chmod -R u+w "$here/reference.new"
rm -rf "$here/reference"
mv "$here/reference.new" "$here/reference"
(cd "$here/reference" && find . -type f | LC_ALL=C sort | xargs sha256sum) > "$here/SHA256SUMS"
echo "copied $shared/reference into testdata/reference; SHA256SUMS rewritten (review git diff)"
