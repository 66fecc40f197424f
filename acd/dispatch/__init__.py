"""Dispatch: claiming (caller, agent) pairs and connecting them, concurrently and in order per
call and per agent."""
