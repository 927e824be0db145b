"""Floor 0: HTTP vocabulary shared by every proxy — path normalisation, header sets (hop-by-hop,
forwarding headers), the edge's limits and the answers Shoal makes itself (:class:`Refusal` and
its ``x-shoal-cause``). Pure: no sockets, no clock."""
