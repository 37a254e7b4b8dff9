"""The ``cxr-node`` command line (typer). Every read command has ``--json``.

Each group of commands lives in its own module with a ``register(app)`` function:

- :mod:`node.cli.service` — serve, worker, status, studies, echo, db
- :mod:`node.cli.results` — resend
- :mod:`node.cli.admin` — models, train, evaluate (with demo, the only places node reaches training)
- :mod:`node.cli.demo` — demo

What they share (``fail``, ``print_json``, the settings and the database of a command) is in
:mod:`node.cli.kit`.
"""

from __future__ import annotations

import typer

from node.cli import admin, demo, results, service

app = typer.Typer(
    name="cxr-node",
    help="cxr-node: a DICOM node that segments the lungs and scores five findings on chest X-rays.",
    no_args_is_help=True,
    add_completion=False,
)

for _module in (service, results, admin, demo):
    _module.register(app)
