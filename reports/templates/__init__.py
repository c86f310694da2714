"""Jinja templates of the reports (a package so that setuptools ships them as its data)."""
