"""Runnable examples; `app` is the demo that `nox -s demo` serves."""
