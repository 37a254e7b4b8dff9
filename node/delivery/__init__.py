"""Delivery of the node's outputs to PACS: C-STORE SCU, retry policy, destinations, the ``deliver`` task.

- :mod:`node.delivery.scu` — one association per destination, proposing only what is sent;
- :mod:`node.delivery.policy` — exponential backoff and the attempt limit;
- :mod:`node.delivery.destinations` — configured destinations plus the sender when it is a known PACS;
- :mod:`node.delivery.records` — delivery rows: create once, claim due ones, record attempts, wake waiting ones;
- :mod:`node.delivery.lease` — the heartbeat that keeps a claim alive while its association runs;
- :mod:`node.delivery.task` — the ``deliver`` task, its sweeps and ``resend``;
- :mod:`node.delivery.sweep`, :mod:`node.delivery.probe` — the node's sweeper thread and the
  destination probes that send waiting deliveries as soon as their destination answers again.
"""
