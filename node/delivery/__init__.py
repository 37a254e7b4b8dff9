"""Delivery of the node's outputs to PACS: C-STORE SCU, retry policy, destinations, the ``deliver`` task.

- :mod:`node.delivery.scu` — one association per destination, proposing only what is sent;
- :mod:`node.delivery.policy` — exponential backoff and the attempt limit;
- :mod:`node.delivery.destinations` — configured destinations plus the sender when it is a known PACS;
- :mod:`node.delivery.records` — delivery rows: create once, claim due ones, record attempts;
- :mod:`node.delivery.task` — the ``deliver`` task, its sweeps and ``resend``.
"""
