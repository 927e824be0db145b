"""Floor 2: the data plane — the routing snapshot, route matching, balancers, outlier and
breaker state, retries, the upstream client, activation, the node router and credentials."""
