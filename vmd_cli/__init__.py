"""Command line and terminal UI for vmd."""
