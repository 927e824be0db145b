"""Failover drills: steady traffic, an injected fault or store outage, and a report."""
