"""The store contract suite (tests/store/test_contract.py), on the target: the strict emulator, or a real Bitable."""

from tests.store.test_contract import *  # noqa: F403  (the same test functions; `store` comes from this folder)
