"""Adapters: the only code that awaits. Each one wraps a peer (Asterisk over AMI and FastAGI, Redis,
HTTP) and translates its failures into the project's error tree at the boundary."""
