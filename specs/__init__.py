"""Model and training specifications as data files (installed as the ``prismer_specs`` package).

Nothing to import here: :mod:`prismer_core.specs` finds these files with importlib.resources,
so they travel with a wheel exactly as they sit in the source tree.
"""
