"""The etcd v3 store backend.

* :mod:`corral.store.etcd.client`: :class:`EtcdStore` and ``open_etcd_store(url)``
  (what ``open_store("etcd://...")`` loads; needs the ``etcd`` extra).
* :mod:`corral.store.etcd.conditional`: ``create`` / ``compare_and_set`` as one
  transaction, and reading its answer.
* :mod:`corral.store.etcd.connection`: channels, member failover.
* :mod:`corral.store.etcd.fenced`: puts and deletes as fenced transactions (a late
  retry never overwrites a newer value).
* :mod:`corral.store.etcd.grpc_errors`: which grpc errors mean failover, and
  their translation into :mod:`corral.core.errors`.
* :mod:`corral.store.etcd.url`: ``etcd://`` URL parsing and ``etcd_url_from_conf``
  (pure; importable without grpc).

Nothing is imported here, so that ``corral.store.etcd.url`` stays light.
"""

import os as _os

# The agent forks (workers, the reaper's watchdog) while grpc's threads run;
# grpc's fork handlers are useless there (children exec at once) and log a line
# on every fork. Turn them off before grpc initialises (this package is imported
# before any of its modules import grpc). Workers do not inherit this: their
# environment is copied from the agent's at start-up.
_os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
_os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
