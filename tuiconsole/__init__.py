"""tuiconsole: a keyboard-driven terminal console for a live PyTorch training run."""

__version__ = "0.1.0"
