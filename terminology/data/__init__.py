"""Terminology resources shipped with the hub (see README.md)."""
