"""Decode kopf's watch streams with orjson instead of the standard library's json.

Every watch event is one line of JSON holding a whole object (an Experiment, a Job, a pod),
and kopf decodes each with ``json.loads``: about 11% of the operator's CPU through a
1000-Experiment benchmark (py-spy, docs/operator.md). orjson decodes the same lines about
twice as fast and returns the same plain dicts, lists, strings and numbers. kopf has no
setting for its decoder, so this swaps the ``json`` name that kopf's watch-streaming module
looks up, and only that module's; the swap is checked by a unit test against the installed
kopf, and if a future kopf moves the call, the operator logs it and keeps kopf's decoder.
"""

from __future__ import annotations

import importlib
import json
import logging
import types

import orjson

log = logging.getLogger("kexp.operator")
#: The kopf module whose ``json.loads`` decodes each line of a watch stream.
KOPF_STREAM_MODULE = "kopf._cogs.clients.api"


#: Stands in for the ``json`` module inside kopf's watch-streaming module: orjson's decoder
#: and, for anything else kopf might look up there, the standard library's.
ORJSON_AS_JSON = types.SimpleNamespace(**{**vars(json), "loads": orjson.loads})


def decode_watches_with_orjson() -> bool:
    """Make kopf decode watch events with orjson; False (and a log line) when it cannot."""
    try:
        module = importlib.import_module(KOPF_STREAM_MODULE)
    except ImportError:
        module = None
    if module is None or getattr(module, "json", None) not in (json, ORJSON_AS_JSON):
        log.info("kopf's watch decoder was not found; watch events are decoded by kopf's own")
        return False
    module.json = ORJSON_AS_JSON  # type: ignore[attr-defined]
    return True
