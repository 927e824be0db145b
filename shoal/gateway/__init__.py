"""Floor 3: the hypercorn edge — listeners, TLS, edge hygiene and the ASGI proxy app."""
