"""The quantization pipeline as a row of stages, each in its own module with one entry point:

    load -> prepare -> prune -> smooth -> calibrate -> plan -> recover -> rewrite -> check -> save

Every stage takes the run's ``State`` (``state.py``) and returns a new one; what a run reads
besides the model and the recipe (samples, metric, progress, threads...) is one ``RunData``
(``run_data.py``). ``build.py`` runs plan -> recover -> rewrite from a calibrated state: mixed
precision (``mixed.py``), the float-island re-plan (``islands.py``) and sensitivity
(``ranking.py``) re-run that suffix without collecting statistics again.
"""
