"""The client side of a cluster: URL lists, fail-over, transient errors, replicas."""
