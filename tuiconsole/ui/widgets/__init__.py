"""Widgets of the console: one class per module."""
