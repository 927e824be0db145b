"""Floor 0: who a component is — SPIFFE IDs, and the PKI primitives that bind them to keys
(root CA, CSRs, signing, verification, TLS contexts). No Redis, no clock reads."""
