"""The dashboard: a read-only view of the mesh, live (``shoal dashboard``, ``shoal top``)."""
