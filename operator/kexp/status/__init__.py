"""Pure functions that read the cluster's objects and say what an Experiment's status is."""
