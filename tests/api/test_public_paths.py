"""The documented import paths (docs/api.md, docs/events.md, docs/backends.md) still
name the same objects after the shared values moved into corral.core (issue 24)."""

from __future__ import annotations

import importlib

import pytest

import corral.core.errors
import corral.core.events
import corral.core.failures
import corral.core.model


@pytest.mark.parametrize(
    ("public", "home", "names"),
    [
        ("corral.errors", corral.core.errors, corral.core.errors.__all__),
        ("corral.events.types", corral.core.events, corral.core.events.__all__),
        ("corral.reporting.failures", corral.core.failures, ["FailureReport"]),
        ("corral.rendezvous.api", corral.core.model, corral.core.model.__all__),
    ],
)
def test_a_documented_path_names_the_same_objects(
    public: str, home: object, names: list[str]
) -> None:
    module = importlib.import_module(public)
    assert names
    for name in names:
        assert getattr(module, name) is getattr(home, name), f"{public}.{name}"


def test_the_plugin_contracts_stay_where_the_docs_say() -> None:
    from corral.rendezvous.api import Rendezvous
    from corral.store.api import Store

    assert Rendezvous.__module__ == "corral.rendezvous.api"
    assert Store.__module__ == "corral.store.api"
