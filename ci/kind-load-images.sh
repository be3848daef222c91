#!/usr/bin/env bash
# Builds the three service images for the host architecture and loads them into a kind cluster,
# named as the chart expects by default: gvirtus-kai/<component>:<chart appVersion>.
# usage: ci/kind-load-images.sh [KIND_CLUSTER_NAME]
# env:   IMAGE_PREFIX (default gvirtus-kai), IMAGE_TAG (default: appVersion of the chart)
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=${1:-kind}
prefix=${IMAGE_PREFIX:-gvirtus-kai}
tag=${IMAGE_TAG:-$(sed -n -E 's/^appVersion:[[:space:]]*"?([^"[:space:]]+)"?[[:space:]]*$/\1/p' charts/gvirtus-kai/Chart.yaml)}
if [[ -z $tag ]]; then
  echo "IMAGE_TAG is unset and charts/gvirtus-kai/Chart.yaml has no appVersion" >&2
  exit 2
fi

for component in webhook labeler device-plugin controller; do
  image="$prefix/$component:$tag"
  echo "::group::$image"
  docker buildx build --load --file "Dockerfile.$component" --tag "$image" .
  kind load docker-image --name "$cluster" "$image"
  echo "::endgroup::"
done
