"""Environments and their evaluation metrics."""
