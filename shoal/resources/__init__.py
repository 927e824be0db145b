"""Floor 0: what users write, as values. The resource model (frozen dataclasses), its parsing
and validation from YAML manifests (Shoal's own fields and Istio's), registry records of
instances (endpoints), and pure edits of resources (traffic weights). Imports nothing of
Shoal's above floor 0."""
