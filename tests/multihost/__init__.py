"""Multi-host tests: Shoal's processes on separate network hosts (Linux namespaces)."""
