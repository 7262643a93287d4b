"""Modal screens of the console: one class per module (confirm.py holds both confirms)."""
