"""Model merging (``posttrain merge``): the merges in :mod:`.methods`, the experiments built on
them (α sweeps, train-a-skill-then-merge, mixture simulation) in :mod:`.experiments`, the command
in :mod:`.cli`."""

from posttrain.merging.methods import *  # noqa: F401,F403
from posttrain.merging.methods import __all__  # noqa: F401
