"""Everything the tests share: helpers, fakes, and the fixtures tests/conftest.py imports."""
