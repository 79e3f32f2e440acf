"""Services that keep themselves running, as values: the pure core of the scheduler.

``spec`` (what an operator asked for, checked), ``plan`` (where replicas go and which
go away), ``lease`` (which node may schedule, and the fencing that keeps an old
scheduler's orders from being obeyed). No sockets, no clock, no Docker: time comes in
as ``now``; treescale/services/orchestrator.py does the I/O.
"""
