"""The ``cluster`` fixture (a real loopback SeaweedFS cluster) for the tests here."""

from clusterkit import cluster

__all__ = ["cluster"]
