"""``python -m posttrain.pluralistic``: the VPL command line (``posttrain.pluralistic.cli.main``)."""

from posttrain.pluralistic.cli import main

raise SystemExit(main())
