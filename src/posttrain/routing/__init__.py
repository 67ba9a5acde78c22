"""Hybrid human / LM preference routing (``posttrain route``): the method in :mod:`.router`, the
command in :mod:`.cli`."""

from posttrain.routing.router import FEATURES, RouteResult, register_feature, route, routed_rows  # noqa: F401

__all__ = ["FEATURES", "RouteResult", "register_feature", "route", "routed_rows"]
