"""The training engine: torch only. Never imports textual or rich (a test enforces it)."""
