"""mxfs CSI node plugin: serves models of the node's mxfs mount as read-only volumes.

Speaks CSI v1 (Identity + Node) on a unix socket beside the node daemon; a publish
bind-mounts one model's directory of the node mount, read-only, into the pod.
"""

DEFAULT_DRIVER_NAME = "csi.mxfs.io"
