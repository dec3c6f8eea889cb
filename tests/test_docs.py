"""The README and docs/ tell users everything the code offers, and the README stays short.

What a user would notice: a configuration key, metric, alert, event type, poll reason or
command that exists but is documented nowhere; a README link that leads nowhere; a docs page
the site's navigation does not reach. `bash .ci/docs` checks links and anchors inside docs/.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from pydantic import BaseModel

from watcher.cli.main import build_parser
from watcher.config.model import Settings
from watcher.engine.events import EVENT_TYPES
from watcher.engine.schedule import Reason

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_LIMIT = 10 * 1024


def text(name: str) -> str:
    """A docs page's Markdown."""
    return (DOCS / name).read_text(encoding="utf-8")


def sections(markdown: str) -> dict[str, str]:
    """Heading line → the text up to the next heading of any level."""
    parts = re.split(r"(?m)^(#{1,6} .*)$", markdown)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def model_of(annotation: Any) -> type[BaseModel] | None:
    """The settings section a field holds: a model, or the model of a list of them."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = model_of(arg)
        if found is not None:
            return found
    return None


def config_tables(
    model: type[BaseModel], path: tuple[str, ...] = ()
) -> Iterator[tuple[str, list[str]]]:
    """(TOML table name, its plain keys) for every section of the settings, nested ones too."""
    keys = []
    for name, field in model.model_fields.items():
        inner = model_of(field.annotation)
        if inner is None:
            keys.append(name)
        else:
            yield from config_tables(inner, (*path, name))
    if path:
        yield ".".join(path), keys


def subcommands(parser: argparse.ArgumentParser) -> list[str]:
    """The names of the top-level subcommands."""
    for action in parser._actions:  # argparse has no public way to list them
        if isinstance(action, argparse._SubParsersAction):
            return sorted(action.choices)
    return []


def test_readme_is_short_and_keeps_the_ci_command() -> None:
    body = README.read_text(encoding="utf-8")
    assert len(body.encode()) <= README_LIMIT
    first_block = body.split("```")[1].splitlines()
    assert first_block[1].endswith("cbr-watcher demo  # the demo")
    assert first_block[2].endswith("# the whole test suite")  # what .ci/run runs


def test_readme_links_lead_somewhere() -> None:
    body = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", body)
    local = [link for link in links if "://" not in link]
    assert local
    assert [link for link in local if not (ROOT / link).exists()] == []


def test_every_docs_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))

    def pages(nav: Any) -> Iterator[str]:
        if isinstance(nav, str):
            yield nav
        elif isinstance(nav, list):
            for item in nav:
                yield from pages(item)
        elif isinstance(nav, dict):
            for value in nav.values():
                yield from pages(value)

    in_nav = sorted(pages(config["nav"]))
    on_disk = sorted(path.name for path in DOCS.glob("*.md"))
    assert in_nav == on_disk


@pytest.mark.parametrize(
    ("table", "keys"), list(config_tables(Settings)), ids=lambda value: str(value)
)
def test_every_configuration_key_is_documented(table: str, keys: list[str]) -> None:
    """Each section of the settings has a heading in docs/configuration.md whose table has a
    row for each of its keys."""
    headings = {
        heading.strip("# `[]"): body for heading, body in sections(text("configuration.md")).items()
    }
    assert table in headings, f"no heading for [{table}]"
    rows = set(re.findall(r"(?m)^\| `([a-z_]+)` \|", headings[table]))
    assert sorted(set(keys) - rows) == []


def test_every_metric_is_documented() -> None:
    source = "\n".join(
        path.read_text(encoding="utf-8")
        for path in (ROOT / "watcher" / "observe" / "metrics").glob("*.py")
    )
    families = set(re.findall(r'PREFIX \+ "([a-z_]+)"', source))
    assert len(families) > 20
    documented = text("metrics.md")
    assert sorted(f for f in families if f"`cbr_watcher_{f}" not in documented) == []


def test_every_shipped_alert_is_documented() -> None:
    rules = yaml.safe_load(
        (ROOT / "deploy" / "prometheus" / "cbr-watcher-alerts.yml").read_text(encoding="utf-8")
    )
    alerts = {
        rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule
    }
    assert alerts
    documented = text("metrics.md")
    assert sorted(alert for alert in alerts if f"`{alert}`" not in documented) == []


def test_every_event_type_and_poll_reason_is_documented() -> None:
    webhooks = text("webhooks.md")
    assert [event for event in EVENT_TYPES if f"`{event}`" not in webhooks] == []
    polling = text("polling.md")
    assert [reason.value for reason in Reason if f"`{reason.value}`" not in polling] == []


def test_every_command_is_in_the_readme_and_the_cli_page() -> None:
    commands = subcommands(build_parser())
    assert "run" in commands
    for page in (README.read_text(encoding="utf-8"), text("cli.md")):
        assert [name for name in commands if f"`cbr-watcher {name}" not in page] == []


def test_user_docs_cite_no_internal_documents() -> None:
    """Users have the README and docs/, not the project's internal contract and notes."""
    for path in [README, *DOCS.glob("*.md")]:
        body = path.read_text(encoding="utf-8")
        assert re.search(r"SPEC|DESIGN\.md|cbr-api\.md", body) is None, path.name
