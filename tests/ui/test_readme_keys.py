"""The README's key table is the bindings table, not a hand-kept list.

When a binding changes, this test fails and prints the table to paste.
"""

from pathlib import Path

from tuiconsole.ui.app import ConsoleApp

README = Path(__file__).resolve().parents[2] / "README.md"
KEY_NAMES = {"colon": ":", "question_mark": "?", "slash": "/"}


def keys_table() -> str:
    rows = ["| key | action | id |", "|---|---|---|"]
    for b in ConsoleApp.BINDINGS:
        key = KEY_NAMES.get(b.key, b.key)
        rows.append(f"| `{key}` | {b.tooltip or b.description} | `{b.id}` |")
    return "\n".join(rows)


def test_readme_key_table_matches_bindings():
    table = keys_table()
    assert table in README.read_text(), "README key table is stale; paste:\n" + table
