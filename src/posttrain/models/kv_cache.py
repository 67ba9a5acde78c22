"""The KV-cache argument under the name the installed transformers uses.

transformers 5.25 renamed the cache argument of ``forward``/``generate`` and the output field
from ``past_key_values`` to ``cache`` (the old name warns and goes in 5.40). The lock pins an
older release for vLLM's sake and users may have either, so the name is read once from the
output dataclasses rather than assumed.
"""

from __future__ import annotations

import dataclasses

from transformers.modeling_outputs import BaseModelOutputWithPast

CACHE_ARG = "cache" if "cache" in {f.name for f in dataclasses.fields(BaseModelOutputWithPast)} else "past_key_values"


def kv_cache(output):
    """The KV cache a forward with ``use_cache=True`` returned."""
    return output[CACHE_ARG] if CACHE_ARG in output else getattr(output, CACHE_ARG)


def with_cache(cache) -> dict:
    """Keyword arguments that pass ``cache`` to a model's ``forward`` or ``generate``."""
    return {CACHE_ARG: cache}
