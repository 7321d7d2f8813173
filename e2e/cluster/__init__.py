"""A real local Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler,
KWOK nodes) built from pinned sources: `python -m e2e.cluster build|up|down|status`."""
