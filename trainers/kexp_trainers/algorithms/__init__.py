"""One readable file per algorithm (CleanRL style); shared pieces in ``common``."""
