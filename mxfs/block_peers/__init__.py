"""Peer cache: node daemons serve their cached blocks to each other.

``server`` serves blocks (token-checked, bounded), ``client`` reads them, ``registry``
talks to the server's block-holder registry, ``holdings`` tracks and announces what
this node holds, ``view`` caches who holds what, ``swarm`` spreads a cold fleet's
first fetches, ``service`` assembles it all for the daemon.
"""
