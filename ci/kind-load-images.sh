#!/usr/bin/env bash
# Builds the GVirtuS-KAI service images for the host architecture and loads them into a kind
# cluster, named as the chart expects by default: the `repository` of each component in
# charts/gvirtus-kai/values.yaml, tagged with the chart's appVersion.
# usage: ci/kind-load-images.sh [KIND_CLUSTER_NAME]
# env:   IMAGE_PREFIX (images are then <IMAGE_PREFIX>-<component>), IMAGE_TAG (default: appVersion)
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=${1:-kind}
chart=charts/gvirtus-kai
tag=${IMAGE_TAG:-$(sed -n -E 's/^appVersion:[[:space:]]*"?([^"[:space:]]+)"?[[:space:]]*$/\1/p' "$chart/Chart.yaml")}
if [[ -z $tag ]]; then
  echo "IMAGE_TAG is unset and $chart/Chart.yaml has no appVersion" >&2
  exit 2
fi

for component in webhook labeler device-plugin controller backend-agent; do
  if [[ -n ${IMAGE_PREFIX:-} ]]; then
    repository="$IMAGE_PREFIX-$component"
  else
    repository=$(sed -n -E "s#^[[:space:]]+repository:[[:space:]]*([^[:space:]]*gvirtus-kai-$component)[[:space:]]*\$#\1#p" "$chart/values.yaml")
    if [[ -z $repository ]]; then
      echo "$chart/values.yaml has no image repository for $component" >&2
      exit 2
    fi
  fi
  image="$repository:$tag"
  echo "::group::$image"
  docker buildx build --load --file "Dockerfile.$component" --tag "$image" .
  kind load docker-image --name "$cluster" "$image"
  echo "::endgroup::"
done
