"""Metrics and logging: the bottom layer every other one may use (imports nothing of ours)."""
