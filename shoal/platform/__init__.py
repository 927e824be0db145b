"""Floor 3: the runtime and the control plane. ``runtime/`` runs instances on a node, ``control/``
decides (controller, autoscaler, scheduler, rollouts, the CLI's API), ``ca/`` is the mesh CA,
``drills/`` proves failover; ``node``, ``supervisor``, ``process`` and ``settings`` wire them into
OS processes."""
