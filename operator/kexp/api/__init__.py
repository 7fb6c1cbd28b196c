"""kexp's API: the Experiment models, the CRDs generated from them, and the trainer contract."""
