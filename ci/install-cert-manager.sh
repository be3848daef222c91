#!/usr/bin/env bash
# Installs a pinned cert-manager release into the current cluster and waits until its admission
# webhook answers: "Deployment Available" comes before the webhook's own CA is in place, and a
# chart that creates Issuers/Certificates too early fails with "failed calling webhook".
# usage: ci/install-cert-manager.sh VERSION   (e.g. v1.19.1)
set -euo pipefail

version=${1:?usage: ci/install-cert-manager.sh VERSION}
releases=https://github.com/cert-manager/cert-manager/releases/download

kubectl apply -f "$releases/$version/cert-manager.yaml"
kubectl wait --namespace cert-manager --for=condition=Available deployment --all --timeout=300s

probe_issuer='{"apiVersion": "cert-manager.io/v1", "kind": "Issuer",
  "metadata": {"name": "readiness-probe", "namespace": "default"}, "spec": {"selfSigned": {}}}'
for _ in $(seq 1 60); do
  if kubectl create --dry-run=server -f - <<<"$probe_issuer" >/dev/null 2>&1; then
    echo "cert-manager $version is ready"
    exit 0
  fi
  sleep 5
done
echo "cert-manager's webhook did not accept a dry-run Issuer within 300s" >&2
kubectl create --dry-run=server -f - <<<"$probe_issuer"
exit 1
