"""After a search: retrain a genotype with the CMT/DeiT recipe (``trainer``, ``recipe``,
``data``), use it from timm (``models``) and export it (``export``). ``retrain.py`` is the
command line."""
