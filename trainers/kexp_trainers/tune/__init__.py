"""Hyperparameter sweeps with Ray Tune: ``python -m kexp_trainers.tune``.

One entry point for both ways a sweep runs: in one pod that starts a local Ray (the default),
or as the driver of a KubeRay RayJob (``spec.sweep.rayCluster``; ``RAY_ADDRESS`` is set there).
Each trial is a single kexp run (``kexp_trainers.run.train_run``) with the trial's
hyperparameters merged into the spec, writing under ``<prefix>/trials/<trial>/``; the sweep
reports to ``<prefix>/sweep.json`` and keeps Tune's state under ``<prefix>/tune/`` so that a
restarted sweep resumes instead of starting over.
"""
