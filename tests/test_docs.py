"""The README stays true to the code: every setting and CLI group is documented."""

from pathlib import Path

from app.config import SETTINGS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table():
    missing = [s.env for s in SETTINGS if f"| `{s.env}` |" not in README]
    assert missing == []


def test_every_cli_group_is_documented(app):
    groups = {"clients", "users", "keys", "demo", "store", "consents", "outbox", "upstreams"}
    assert groups <= set(app.cli.commands)
    for group in groups:
        assert f"`{group} " in README
