"""runtime layer of acd (see docs/architecture.md)."""
