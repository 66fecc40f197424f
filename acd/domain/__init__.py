"""domain layer of acd (see DESIGN.md)."""
