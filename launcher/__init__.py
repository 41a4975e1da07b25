"""Command lines and local clusters: ``ps-server``, ``ps-worker``, ``ps-launch``.

The only package that reads argv and ``PS_*`` environment variables; it builds the
frozen configs that :mod:`ps` and :mod:`worker` take.
"""
