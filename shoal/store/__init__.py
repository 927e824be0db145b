"""Floor 1: Redis — connection (and the embedded server), keys, config, registry, change feed,
acks, the PKI's keys, the leader lease and the autoscaler's published decisions. The only place
Redis commands live."""
