"""The kexp operator: ``kopf run -m kexp.handlers`` (or ``kexp operator``) loads these handlers."""

from kexp.handlers import experiments as experiments
