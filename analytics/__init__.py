"""hopscope's analytics: classify spans into mesh roles (classify.py) and cut each trace into hops whose latency
is split into iptables, proxy, network, app and retry (hops.py), per docs/design.md §2–§3 and docs/hop-model.md.

Reads what the collector stored; never imported by it.
"""
