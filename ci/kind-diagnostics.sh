#!/usr/bin/env bash
# Prints what is needed to understand a failed chart-testing or e2e run on a kind cluster:
# nodes with labels and GPU capacity, every pod, recent events, and our pods' descriptions and logs.
# Never fails itself, so it can run as an `if: failure()` step.
set -uo pipefail

section() { echo "::group::$1"; shift; "$@" 2>&1; echo "::endgroup::"; }

selector=app.kubernetes.io/part-of=gvirtus-kai
section "nodes" kubectl get nodes --show-labels -o wide
section "node GPU allocatable" kubectl get nodes \
  -o custom-columns='NAME:.metadata.name,GPU:.status.allocatable.nvidia\.com/gpu'
section "pods" kubectl get pods --all-namespaces -o wide
section "events" kubectl get events --all-namespaces --sort-by=.lastTimestamp
section "mutating webhooks" kubectl get mutatingwebhookconfigurations -o yaml
section "helm releases" helm list --all-namespaces --all
section "gvirtus-kai pods" kubectl describe pods --all-namespaces -l "$selector"
mapfile -t namespaces < <(kubectl get pods --all-namespaces -l "$selector" \
  -o jsonpath='{range .items[*]}{.metadata.namespace}{"\n"}{end}' | sort -u)
for namespace in "${namespaces[@]}"; do
  section "gvirtus-kai logs in $namespace" kubectl logs --namespace "$namespace" -l "$selector" \
    --all-containers --prefix --tail=200 --max-log-requests=20
done
exit 0
