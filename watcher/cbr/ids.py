"""Task ID validation: an ID is spliced into a URL path, so only a safe alphabet gets through."""

from __future__ import annotations

import re

TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
TASK_ID_RULE = "1-128 characters: letters, digits, '_' or '-', starting with a letter or digit"


class InvalidTaskIdError(ValueError):
    """A task ID that does not match TASK_ID_PATTERN."""

    def __init__(self, task_id: object) -> None:
        self.task_id = task_id
        shown = repr(task_id) if len(repr(task_id)) <= 80 else repr(task_id)[:77] + "..."
        super().__init__(f"invalid task ID {shown}: expected {TASK_ID_RULE}")


def is_valid_task_id(task_id: object) -> bool:
    """Whether `task_id` is a string CBR could have issued as an operation-log ID."""
    return isinstance(task_id, str) and TASK_ID_PATTERN.fullmatch(task_id) is not None


def validate_task_id(task_id: object) -> str:
    """Return `task_id` unchanged, or raise InvalidTaskIdError naming it and the rule."""
    if not is_valid_task_id(task_id):
        raise InvalidTaskIdError(task_id)
    assert isinstance(task_id, str)
    return task_id


def parse_task_file(text: str) -> list[str]:
    """IDs from a task file: one per line, blank lines and '#' comments ignored, in file order
    with repeats dropped. Linear in the size of the file, so a 50,000-line file is no burden.

    Raises InvalidTaskIdError (with the line number) on the first bad line.
    """
    ids: dict[str, None] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if TASK_ID_PATTERN.fullmatch(line) is None:
            error = InvalidTaskIdError(line)
            error.args = (f"line {number}: {error}",)
            raise error
        ids[line] = None
    return list(ids)
