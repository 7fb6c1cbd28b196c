"""The kexp command line, also installed as the kubectl plugin ``kubectl-kexp``."""
