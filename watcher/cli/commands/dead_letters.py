"""`cbr-watcher dead-letters list|replay [EVENT_ID]`: webhook events that ran out of `max_age`.

The state file is opened without the daemon's lock, so both work while a daemon runs: SQLite's
own locking keeps the two apart. A replayed event goes back into the outbox with its attempts
reset and a fresh `max_age`; a running daemon sends it on its next look at the outbox (within
30 seconds), otherwise the next `run` does.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from watcher.cli.commands.table import format_table
from watcher.cli.commands.wait_output import printable
from watcher.config import ConfigError, Settings
from watcher.delivery.payloads import rfc3339
from watcher.state.rows import DeadLetter
from watcher.state.sqlite import Store

EXIT_OK = 0
EXIT_FAILURE = 1


def state_path(settings: Settings) -> str:
    """The state file to inspect; ConfigError when there is none to read."""
    path = settings.state.effective_path()
    if path == ":memory:":
        raise ConfigError("state.path = ':memory:': nothing is kept on disk to inspect")
    if not Path(path).is_file():
        raise ConfigError(f"state.path = {path!r}: no state file there (has the daemon run?)")
    return path


def _letter_cells(letter: DeadLetter) -> tuple[str, ...]:
    return (
        letter.event_id,
        printable(letter.receiver),
        letter.event_type,
        letter.task_id,
        str(letter.attempts),
        printable(letter.reason),
        rfc3339(letter.dead_at) or "-",
        printable(letter.last_error) or "-",
    )


def format_dead_letters(letters: list[DeadLetter]) -> list[str]:
    """The `dead-letters list` table: a header, then one line per dead letter."""
    header = ("EVENT", "RECEIVER", "TYPE", "TASK", "ATTEMPTS", "REASON", "DEAD SINCE", "LAST ERROR")
    return format_table(header, map(_letter_cells, letters))


async def run_dead_letters_command(
    settings: Settings,
    action: str,
    *,
    event_id: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """`dead-letters list` or `dead-letters replay [EVENT_ID]`; the exit code."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    store = await Store.open(state_path(settings), lock=False)
    try:
        if action == "list":
            letters = await store.dead_letter_rows()
            if not letters:
                out.write("no dead letters\n")
                return EXIT_OK
            for line in format_dead_letters(letters):
                out.write(line.rstrip() + "\n")
            return EXIT_OK
        if action == "replay":
            moved = await store.replay_dead_letters(event_id)
            if event_id is not None and moved == 0:
                err.write(f"cbr-watcher: dead-letters replay: no dead letter {event_id!r}\n")
                return EXIT_FAILURE
            out.write(f"re-queued {moved} dead letter(s); the daemon delivers them next\n")
            return EXIT_OK
        raise AssertionError(f"unknown dead-letters action {action!r}")
    finally:
        await store.close()
