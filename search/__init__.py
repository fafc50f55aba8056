"""The search: the proxy training, the Optuna and Ray Tune backends that run trials into the run
folder's study (``storage``), and the pipeline of steps after it (``pipeline.run`` is the one
entry point, used by ``run_search.py``)."""
