"""PacketGame: decide, before decoding, which video packets of many streams to decode.

The algorithms live here; :mod:`coinfer.edge.gate` runs them over live streams and
:mod:`coinfer.device.gate` gates one camera's uplink.
"""
