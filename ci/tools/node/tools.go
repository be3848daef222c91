//go:build tools

// Package node pins the node-side binaries of the real-node test tier: containerd 2.x with its
// runc shim, and the CNI plugins. It is a module of its own because containerd and Kubernetes
// pin different versions of shared dependencies (the CRI API among them).
package node

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/main/bridge"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
	_ "github.com/containernetworking/plugins/plugins/meta/portmap"
)
