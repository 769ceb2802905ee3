"""User stores for serving (`base.py`: the promises and `open_store`); importing the package
registers the built-in backends."""

from npalign.stores import postgres, sqlite  # noqa: F401
