"""Training-set decontamination (``posttrain decontaminate``): overlap indexes and scoring in
:mod:`.overlap`, the command in :mod:`.cli`."""

from posttrain.decontamination.overlap import *  # noqa: F401,F403
from posttrain.decontamination.overlap import __all__  # noqa: F401
