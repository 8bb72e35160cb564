"""A fake Instagram API server for the tests (see server.py)."""

from .server import REFUSALS, USER_ID, FakeInstagram, Recorded

__all__ = ["FakeInstagram", "Recorded", "REFUSALS", "USER_ID"]
