"""The store contract suite, run on a real etcd.

Until ``tests/contract/conftest.py`` lists etcd among its backends, the suite's
tests are imported here and get this directory's etcd fixtures.
"""

from tests.contract.test_store import *  # noqa: F403
