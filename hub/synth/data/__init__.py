"""Derived data tables (see scripts/)."""
