"""Floor 1: Redis — connection (and the embedded server), keys, config, registry, change feed
and acks. The only place Redis commands live."""
