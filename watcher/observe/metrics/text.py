"""Writing exposition text by hand: label escaping and family headers.

The hand-written families are gauges (plus one info), whose sample lines are the same in text
0.0.4 and OpenMetrics, so only the headers depend on the format.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

from watcher.safetext import clean


class Family(NamedTuple):
    """A metric family's name and help text."""

    name: str
    help: str


def escape(value: str) -> str:
    """A label value as both text formats want it (lone surrogates become U+FFFD)."""
    value = clean(value)
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def header(family: Family, kind: str, *, openmetrics: bool) -> bytes:
    """`# HELP` and `# TYPE` lines; an info family is a gauge named `<name>_info` in text 0.0.4."""
    name = family.name
    if kind == "info" and not openmetrics:
        name, kind = name + "_info", "gauge"
    return f"# HELP {name} {family.help}\n# TYPE {name} {kind}\n".encode()


_LABEL_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def info_labels(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """A task's labels as info-metric labels, kube-state-metrics style: "app" → `label_app`;
    characters Prometheus does not allow in label names become "_"."""
    if not labels:
        return ()
    named = {"label_" + _LABEL_NAME_UNSAFE.sub("_", key): value for key, value in labels.items()}
    return tuple(sorted(named.items()))
