"""Clusters as networkx graphs, and the cost of collectives on them."""
