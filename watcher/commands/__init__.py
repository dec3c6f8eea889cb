"""Subcommands beyond the daemon: `wait`, and the `tasks` and `dead-letters` clients."""
