"""Federated training pieces; importing the package registers the robust aggregation rules."""

from feddmmr.federated import robust as _robust  # noqa: F401  (registers norm-bound, median, trimmed-mean, krum)
