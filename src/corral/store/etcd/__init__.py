"""The etcd v3 store backend.

* :mod:`corral.store.etcd.client`: :class:`EtcdStore` and ``open_etcd_store(url)``
  (what ``open_store("etcd://...")`` loads; needs the ``etcd`` extra).
* :mod:`corral.store.etcd.connection`: channels, member failover, error translation.
* :mod:`corral.store.etcd.url`: ``etcd://`` URL parsing and ``etcd_url_from_conf``
  (pure; importable without grpc).

Nothing is imported here, so that ``corral.store.etcd.url`` stays light.
"""
