"""PacketGame on the edge: many concurrent streams, gated decoding in worker processes."""
