"""Live mode: the streaming codec over a network (UDP: kpcodec.live.udp; datagrams: kpcodec.live.datagram)."""
