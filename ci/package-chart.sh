#!/usr/bin/env bash
# Packages the chart for a release: chart version and appVersion become the release version, and
# the GVirtuS-KAI image repositories point at the images the release pushed
# (<IMAGE_PREFIX>-<component>). The packaged chart is rendered once to prove every image reference
# was rewritten.
# usage: ci/package-chart.sh VERSION IMAGE_PREFIX OUT_DIR
#   VERSION       release version, with or without a leading "v" (SemVer 2), e.g. v0.2.0
#   IMAGE_PREFIX  image name before "-<component>", e.g. <registry>/<owner>/gvirtus-kai
#   OUT_DIR       directory the .tgz is written to
set -euo pipefail

if (($# != 3)); then
  sed -n 's/^# usage: //p' "$0" >&2
  exit 2
fi
version=${1#v}
prefix=${2%/}
out=$3
semver='^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$'
if [[ ! $version =~ $semver ]]; then
  echo "not a SemVer 2 version: $1" >&2
  exit 2
fi

repo_root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -R "$repo_root/charts/gvirtus-kai" "$work/gvirtus-kai"

components=(webhook labeler device-plugin controller backend-agent)
values="$work/gvirtus-kai/values.yaml"
# values.yaml names each image as `repository: <registry>/<owner>/gvirtus-kai-<component>`; only
# those lines change.
sed -E "s#^([[:space:]]+repository:[[:space:]]*)[^[:space:]]*gvirtus-kai-(webhook|labeler|device-plugin|controller|backend-agent)[[:space:]]*\$#\1${prefix}-\2#" \
  "$values" >"$values.new"
mv "$values.new" "$values"
rewritten=$(grep -c -E "^[[:space:]]+repository:[[:space:]]*${prefix}-" "$values" || true)
if ((rewritten != ${#components[@]})); then
  echo "expected ${#components[@]} image repositories in values.yaml, rewrote $rewritten" >&2
  exit 1
fi

mkdir -p "$out"
helm package "$work/gvirtus-kai" --version "$version" --app-version "$version" --destination "$out"
package="$out/gvirtus-kai-$version.tgz"

rendered=$(helm template release "$package")
for component in "${components[@]}"; do
  image="$prefix-$component:$version"
  if ! grep -q -F "image: \"$image\"" <<<"$rendered" && ! grep -q -F "image: $image" <<<"$rendered"; then
    echo "the packaged chart does not render $image" >&2
    exit 1
  fi
done
echo "$package"
