"""One real node beside the KWOK pools: containerd, kubelet, kube-proxy and CoreDNS in a network
namespace of their own, running pods from images imported into its containerd."""
