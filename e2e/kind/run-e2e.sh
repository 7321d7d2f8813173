#!/usr/bin/env bash
# Runs pdserve's e2e tests on a kind cluster instead of the locally built control plane.
# Needs Docker, kind and kubectl on PATH, and network access to GitHub (KWOK manifests).
#   e2e/kind/run-e2e.sh [pytest args...]      KEEP_CLUSTER=1 keeps the cluster afterwards.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER="${CLUSTER:-pdserve-e2e}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
KWOK_RELEASE="https://github.com/kubernetes-sigs/kwok/releases/download/${KWOK_VERSION}"
export KUBECONFIG="${TMPDIR:-/tmp}/${CLUSTER}.kubeconfig"

make venv
if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --config e2e/kind/kind-config.yaml --wait 120s
fi
kind get kubeconfig --name "$CLUSTER" > "$KUBECONFIG"
if [[ "${KEEP_CLUSTER:-0}" != 1 ]]; then
  trap 'kind delete cluster --name "$CLUSTER"; rm -f "$KUBECONFIG"' EXIT
fi

# KWOK in the cluster simulates the accelerator nodes (node lifecycle + pod ready/delete stages).
kubectl apply -f "${KWOK_RELEASE}/kwok.yaml"
kubectl wait --for=condition=Established crd/stages.kwok.x-k8s.io --timeout=60s
kubectl apply -f "${KWOK_RELEASE}/stage-fast.yaml"
kubectl -n kube-system rollout status deployment/kwok-controller --timeout=180s
.venv/bin/python -m e2e.cluster nodes --kubeconfig "$KUBECONFIG"
kubectl wait --for=condition=Ready node -l type=kwok --timeout=120s

PDSERVE_E2E_KUBECONFIG="$KUBECONFIG" .venv/bin/python -m e2e.pytest_run -m e2e "$@"
