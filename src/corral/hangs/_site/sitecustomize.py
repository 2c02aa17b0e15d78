"""corral's startup hook for workers, used only when ``--hang-timeout`` is on (docs/hangs.md).

The agent prepends this directory to a worker's ``PYTHONPATH``; Python's
``site`` module imports this file at start-up. It then:

1. puts back what the agent changed: ``PYTHONPATH`` in ``os.environ`` as the
   agent had it (so the worker's own children do not load this file) and
   ``sys.path`` without this directory;
2. loads ``corral/progress.py`` by path as ``corral.progress`` (the interpreter
   need not be able to import corral) and calls its ``_autoinstall()``, which
   hooks optimizer steps once torch imports ``torch.optim`` (torch is not
   imported here);
3. imports the ``sitecustomize`` this file shadows, if there is one, so that a
   site's or a virtual environment's own start-up hook still runs (its errors
   surface exactly as ``site`` would show them).

It prints nothing, and any failure of steps 1-2 is silent: a worker must
never fail because hang detection could not be set up.
"""


def _corral_boot() -> None:
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        pythonpath = os.environ.get("PYTHONPATH")
        if pythonpath == here:
            del os.environ["PYTHONPATH"]  # the agent set it: it was unset
        elif pythonpath is not None and pythonpath.startswith(here + os.pathsep):
            os.environ["PYTHONPATH"] = pythonpath[len(here) + 1 :]
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
        name = "corral.progress"
        module = sys.modules.get(name)
        if module is None:
            import importlib.util

            path = os.path.join(os.path.dirname(os.path.dirname(here)), "progress.py")
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is not None and spec.loader is not None:
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(name, None)
                    raise
        if module is not None:
            module._autoinstall()
    except Exception:
        pass


def _chain() -> None:
    """Import the ``sitecustomize`` this one shadows (the next one on ``sys.path``)."""
    import sys

    me = sys.modules.pop("sitecustomize", None)
    try:
        import sitecustomize  # type: ignore[import-not-found]  # noqa: F401  # the next one on sys.path
    except ImportError as exc:
        if exc.name != "sitecustomize":
            if me is not None:
                sys.modules["sitecustomize"] = me
            raise
    except BaseException:
        if me is not None:
            sys.modules["sitecustomize"] = me
        raise
    if "sitecustomize" not in sys.modules and me is not None:
        sys.modules["sitecustomize"] = me  # there was none: this module stays


_corral_boot()
_chain()
