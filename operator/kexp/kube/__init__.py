"""Clients for the Kubernetes API: the only modules (with kexp.storage) that talk to a server."""
