"""What every ``cxr-node`` command module shares: failing, printing JSON, settings, the database.

- :func:`fail`: print ``error: MESSAGE`` on stderr and end the command with an exit status
  (:data:`EXIT_FAILURE` when the command could not do its job, :data:`EXIT_USAGE` for bad settings
  or arguments).
- :func:`print_json`: one JSON document on stdout, indented by two spaces; values JSON does not
  know (datetimes, paths) are written as their ``str``.
- :func:`settings_or_exit`: the node's one settings object, from the ``CXR_NODE_*`` variables (and
  ``CXR_NODE_CONFIG_FILE``) with explicit overrides; an invalid value ends the command with a
  message naming the setting.
- :func:`open_database`: the node's database for a read command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from pydantic import ValidationError

from node.settings import Settings, load_settings

if TYPE_CHECKING:
    from node.db import Database

#: Exit status when the node cannot start or a command cannot do its job.
EXIT_FAILURE = 1
#: Exit status for bad settings or arguments.
EXIT_USAGE = 2

JsonOption = typer.Option(False, "--json", help="Print one machine-readable JSON document.")
LogLevelOption = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING or ERROR.")


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """End the command: print ``error: MESSAGE`` on stderr, then raise ``typer.Exit(code)``.

    Parameters
    ----------
    message : what went wrong and, where there is one, what to do about it.
    code : the exit status (:data:`EXIT_FAILURE` or :data:`EXIT_USAGE`).
    """
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def print_json(data: Any, *, sort_keys: bool = False) -> None:
    """Print ``data`` as one JSON document (indent 2, ``str`` for values JSON does not know).

    Parameters
    ----------
    data : the document.
    sort_keys : sort every mapping's keys (the ``models`` commands print sorted keys; the
        others keep the order in which the document was built).
    """
    typer.echo(json.dumps(data, indent=2, sort_keys=sort_keys, default=str))


def settings_or_exit(**overrides: Any) -> Settings:
    """The node's settings from the environment, with the overrides that are not ``None``.

    A value that does not validate ends the command with :data:`EXIT_USAGE` and one line per bad
    setting (its name and the rule it broke); an unreadable ``CXR_NODE_CONFIG_FILE`` likewise.
    """
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()]
        fail("invalid settings (CXR_NODE_* variables or CXR_NODE_CONFIG_FILE):\n" + "\n".join(lines), EXIT_USAGE)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc), EXIT_USAGE)


def open_database(settings: Settings) -> Database:
    """The node's database for a read command: it must exist; its schema is brought to head.

    A missing SQLite file ends the command with a message naming the data directory the node
    would have created it in; a schema that cannot be upgraded ends it with the reason.
    """
    from node.db import Database

    url = settings.resolved_database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        fail(
            f"no database at {url.removeprefix('sqlite:///')}; has the node run with "
            f"CXR_NODE_DATA_DIR={settings.data_dir}? (or set CXR_NODE_DATABASE_URL)"
        )
    database = Database(url)
    try:
        database.ensure_schema()
    except RuntimeError as exc:
        fail(str(exc))
    return database
