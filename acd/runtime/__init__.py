"""runtime layer of acd (see DESIGN.md)."""
