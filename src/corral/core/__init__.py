"""The bottom layer: values, errors, time and task scopes every other layer shares.

Nothing here imports another part of corral (docs/design.md, "Layers").
"""
