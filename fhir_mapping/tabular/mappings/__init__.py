"""Shipped tabular mapping files (see README.md); a package so that wheels carry them."""
