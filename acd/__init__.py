"""acd: an IVR and ACD engine that drives Asterisk 22 over AMI and FastAGI, with state in Redis."""

__version__ = "0.1.0"
