"""Task state on disk: the SQLite state file and how the engine's task table maps onto it.

- `sqlite`: the `Store`, every query (tasks, outbox, dead letters, bookkeeping, discovery).
- `connection`: the SQLite connection on its worker thread: lock, open, migrate, transactions.
- `schema`: the schema version and its migrations.
- `rows`: the persisted shapes (`TaskRecord`, `OutboxEntry`, ...).
- `records`: engine `WatchedTask` ↔ `TaskRecord`.
- `recorder`: `StateRecorder`, the engine's TaskRecorder (task + outbox + bookkeeping, one commit).
- `restore`: resuming a previous run's watches at start-up.
"""
