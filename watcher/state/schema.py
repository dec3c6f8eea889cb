"""The state file's schema: one SQL migration per version, applied in order at open.

Never edit a shipped entry: append one. `PRAGMA user_version` holds the version a file is at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

SCHEMA_VERSION: Final = 3

MIGRATIONS: Final[Mapping[int, Sequence[str]]] = {
    1: (
        """CREATE TABLE tasks (
            task_id TEXT PRIMARY KEY,
            labels TEXT NOT NULL DEFAULT '{}',
            source TEXT NOT NULL DEFAULT 'config',
            status TEXT,
            progress INTEGER,
            raw TEXT,
            first_seen REAL NOT NULL,
            started REAL,
            last_change REAL,
            last_progress REAL,
            ended REAL,
            end_reason TEXT
        )""",
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id TEXT NOT NULL,
            receiver TEXT NOT NULL,
            task_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            body BLOB NOT NULL,
            created REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt REAL NOT NULL,
            last_error TEXT,
            UNIQUE (event_id, receiver)
        )""",
        "CREATE INDEX outbox_due ON outbox (receiver, next_attempt)",
        "CREATE INDEX outbox_task ON outbox (receiver, task_id, id)",
        """CREATE TABLE dead_letters (
            id INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL,
            receiver TEXT NOT NULL,
            task_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            body BLOB NOT NULL,
            created REAL NOT NULL,
            attempts INTEGER NOT NULL,
            last_error TEXT,
            dead_at REAL NOT NULL,
            reason TEXT NOT NULL
        )""",
        """CREATE TABLE last_success (
            operation_type TEXT PRIMARY KEY,
            ended REAL NOT NULL
        )""",
    ),
    2: (
        # Per-resource freshness, kept from every task that ends with a CBR status.
        """CREATE TABLE resource_status (
            resource_id TEXT NOT NULL,
            operation_type TEXT NOT NULL,
            resource_name TEXT NOT NULL,
            resource_type TEXT NOT NULL,
            vault_id TEXT NOT NULL,
            last_status TEXT NOT NULL,
            last_ended REAL NOT NULL,
            last_success_ended REAL,
            PRIMARY KEY (resource_id, operation_type)
        )""",
        # Small named values, e.g. the discovery cursor (a JSON string).
        """CREATE TABLE meta (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )""",
        # Tasks removed through the task API, so discovery does not bring them back.
        """CREATE TABLE tombstones (
            task_id TEXT PRIMARY KEY,
            removed REAL NOT NULL
        )""",
    ),
    3: (
        # Coverage: every resource the inventory has seen, since when, and what ListBackups
        # said of its newest available backup (so a restart does not ask again).
        """CREATE TABLE inventory_resources (
            resource_id TEXT PRIMARY KEY,
            first_seen REAL NOT NULL,
            asked REAL,
            backed_up INTEGER,
            newest_backup REAL
        )""",
        # Every backup.missed announced, so none is announced twice (pruned after a week).
        """CREATE TABLE missed_backups (
            resource_id TEXT NOT NULL,
            scheduled_at REAL NOT NULL,
            vault_id TEXT NOT NULL,
            policy_id TEXT NOT NULL,
            announced REAL NOT NULL,
            PRIMARY KEY (resource_id, scheduled_at)
        )""",
        # cbr_watcher_resource_missed_backups_total, kept across restarts.
        """CREATE TABLE missed_counts (
            resource_id TEXT NOT NULL,
            vault_id TEXT NOT NULL,
            missed INTEGER NOT NULL,
            PRIMARY KEY (resource_id, vault_id)
        )""",
    ),
}
