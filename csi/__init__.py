"""mxfs CSI node plugin: serves models of the node's mxfs mount as read-only volumes.

Speaks CSI v1 (Identity + Node) on a unix socket beside the node daemon; a publish
bind-mounts one model's directory of the node mount, read-only, into the pod.
"""

from pathlib import Path

DEFAULT_DRIVER_NAME = "csi.mxfs.io"
DEFAULT_KUBELET_DIR = Path("/var/lib/kubelet")  # targets outside it are refused
