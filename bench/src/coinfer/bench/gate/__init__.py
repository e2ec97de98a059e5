"""PacketGame measured: the bench and the proof that gated decoding is exact."""
