#!/usr/bin/env bash
# Build pinned tools from this folder's Go modules into a bin directory.
# Usage: ci/tools/build.sh BIN_DIR NAME...
#   NAME: etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl helm
#         (module ci/tools), containerd containerd-shim-runc-v2 ctr (module ci/tools/node), and
#         cni/bridge cni/host-local cni/loopback cni/portmap (module ci/tools/node, written to
#         BIN_DIR/cni/ so that none of them shadows a system command such as iproute2's `bridge`).
# Versions come from go.mod; the Kubernetes and containerd binaries get their release version
# stamped in, as the upstream release builds do (`kubectl version`, Helm's kubeVersion checks and
# the kubelet's runtime handshake read it).
set -euo pipefail
bin_dir=$(realpath -m "$1")
shift
here=$(cd "$(dirname "$0")" && pwd)

version() { (cd "$2" && go list -m -f '{{.Version}}' "$1"); }

kube=$(version k8s.io/kubernetes "$here")
major=${kube#v}
major=${major%%.*}
minor=${kube#v*.}
minor=${minor%%.*}
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitVersion=$kube -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  kube_ldflags+=" -X $pkg.gitTreeState=clean"
done

for name in "$@"; do
  module=$here
  case "$name" in
    etcd) pkg=go.etcd.io/etcd/server/v3 ldflags="-s -w" ;;
    helm)
      pkg=helm.sh/helm/v4/cmd/helm
      ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$(version helm.sh/helm/v4 "$here")"
      ;;
    kube-apiserver | kube-controller-manager | kube-scheduler | kubectl | kubelet | kube-proxy)
      pkg=k8s.io/kubernetes/cmd/$name ldflags=$kube_ldflags
      ;;
    containerd | containerd-shim-runc-v2 | ctr)
      module=$here/node
      containerd=$(version github.com/containerd/containerd/v2 "$module")
      pkg=github.com/containerd/containerd/v2/cmd/$name
      ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$containerd"
      ;;
    cni/bridge | cni/loopback) module=$here/node pkg=github.com/containernetworking/plugins/plugins/main/${name#cni/} ldflags="-s -w" ;;
    cni/host-local) module=$here/node pkg=github.com/containernetworking/plugins/plugins/ipam/host-local ldflags="-s -w" ;;
    cni/portmap) module=$here/node pkg=github.com/containernetworking/plugins/plugins/meta/portmap ldflags="-s -w" ;;
    *) echo "build.sh: unknown tool $name" >&2 && exit 2 ;;
  esac
  echo "building $name ($pkg)"
  mkdir -p "$(dirname "$bin_dir/$name")"
  (cd "$module" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$bin_dir/$name" "$pkg")
done
