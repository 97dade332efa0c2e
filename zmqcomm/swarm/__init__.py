"""``zmqcomm swarm``: a broker and a few agents as processes, exchanging encrypted messages."""
