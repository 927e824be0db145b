"""The mesh CA at work (controller side): the root on disk and CSRs signed (``signer``), root
rotation decided (``rotation``) and driven (``authority``), certificate administration for the
CLI (``admin``), and join tokens (``tokens``)."""
