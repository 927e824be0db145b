"""Running services on a node: the agent (``agent``) that reconciles placements into instance
processes (``instance``), their health checks (``health``, ``probe``), restart decisions
(``reconcile``), pre-warmed templates (``template_process`` runs inside one, ``template_pool`` is
the agent's side), the runtime of an ``app:`` instance (``serve``) and drill faults (``faults``)."""
