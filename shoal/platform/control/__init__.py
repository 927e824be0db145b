"""The control plane (the leading controller and the CLI's API): the controller loop
(``controller``), the autoscaler (``autoscaler`` pure, ``scaling`` around it), placement
(``scheduler``), rollouts (``rollout`` pure, ``rollout_runner`` around it) and the operations
the CLI calls (``client``)."""
