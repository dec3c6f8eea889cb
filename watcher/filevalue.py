"""A value kept in a file (a mounted Secret, a credential), re-read when the file changes."""

from __future__ import annotations

import os
from pathlib import Path


class FileValue:
    """The stripped text of `path`; re-read only when its mtime, size or inode changes."""

    def __init__(self, path: str | Path, *, key: str) -> None:
        self.path = Path(path)
        self.key = key
        self._stamp: tuple[int, int, int] | None = None
        self._value = ""

    def read(self) -> str:
        """The current content; OSError/ValueError name the config key, never the content."""
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if stamp != self._stamp:
                self._value = self.path.read_text(encoding="utf-8").strip()
                self._stamp = stamp
        except OSError as error:
            raise OSError(
                f"cannot read {self.key} {str(self.path)!r}: {os.strerror(error.errno or 0)}"
            ) from None
        except UnicodeDecodeError:
            raise ValueError(f"{self.key} {str(self.path)!r} is not UTF-8 text") from None
        if not self._value:
            raise ValueError(f"{self.key} {str(self.path)!r} is empty")
        return self._value

    def forget(self) -> None:
        """Make the next `read` go to the file even if it looks unchanged."""
        self._stamp = None
