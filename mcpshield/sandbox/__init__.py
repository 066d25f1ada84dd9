"""The OS sandbox the server runs in: a profile's `[sandbox]` turned into a backend's launch
(bubblewrap or Landlock + seccomp on Linux, sandbox-exec on macOS), an egress proxy for host
allowlists, and `mcpshield doctor`, which says what this machine can enforce."""
