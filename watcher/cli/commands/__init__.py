"""Subcommands beyond the daemon: `wait`, `demo`, `simulate`, `webhook-test`, and the `tasks`
and `dead-letters` clients."""
