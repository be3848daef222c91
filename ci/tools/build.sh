#!/usr/bin/env bash
# Build pinned tools from this folder's Go module into a bin directory.
# Usage: ci/tools/build.sh BIN_DIR NAME...   (NAME: etcd kube-apiserver kube-controller-manager
#        kube-scheduler kubectl helm)
# Versions come from go.mod; the Kubernetes binaries get their release version stamped in, as the
# upstream release build does, so that `kubectl version` and Helm's kubeVersion checks see it.
set -euo pipefail
bin_dir=$(realpath -m "$1")
shift
cd "$(dirname "$0")"

version() { go list -m -f '{{.Version}}' "$1"; }

kube=$(version k8s.io/kubernetes)
major=${kube#v}
major=${major%%.*}
minor=${kube#v*.}
minor=${minor%%.*}
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitVersion=$kube -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  kube_ldflags+=" -X $pkg.gitTreeState=clean"
done

mkdir -p "$bin_dir"
for name in "$@"; do
  case "$name" in
    etcd) pkg=go.etcd.io/etcd/server/v3 ldflags="-s -w" ;;
    helm)
      pkg=helm.sh/helm/v4/cmd/helm
      ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$(version helm.sh/helm/v4)"
      ;;
    kube-apiserver | kube-controller-manager | kube-scheduler | kubectl)
      pkg=k8s.io/kubernetes/cmd/$name ldflags=$kube_ldflags
      ;;
    *) echo "build.sh: unknown tool $name" >&2 && exit 2 ;;
  esac
  echo "building $name ($pkg)"
  CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$bin_dir/$name" "$pkg"
done
