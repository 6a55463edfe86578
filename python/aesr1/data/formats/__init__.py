"""Readers of the distributed annotation formats, one module per family of datasets."""
