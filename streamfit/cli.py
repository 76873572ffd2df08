"""The command line every tool and recipe shares: its own flags, ``--config FILE`` and
``key=value`` overrides of one typed config (the tool's dataclass, a library one such as
``FitConfig``, or a recipe's config tree).

Precedence, lowest first: the schema's defaults, the tool's own defaults, the config file,
the flags given, the ``key=value`` overrides. ``key=value`` items may stand anywhere on the
line (before or after the flags and the tool's positional arguments).

Logging is set up with the parse: streamfit's INFO lines (loggers named ``streamfit...``)
and other libraries' from WARNING only (open_clip logs every model build at INFO through
the root logger).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from streamfit.config import ConfigError, load_config
from streamfit.report import setup_logging

T = TypeVar("T")

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def tool_parser(description: str | None, schema: type) -> argparse.ArgumentParser:
    """A parser with ``--config FILE`` for ``schema``; the tool adds its own flags."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawTextHelpFormatter,
        epilog=f"key=value: set any {schema.__name__} field (nested keys with dots), "
        "after the config file and the flags",
    )
    parser.add_argument("--config", help=f"YAML file of {schema.__name__} fields")
    return parser


def add_loader_flags(parser: argparse.ArgumentParser, shards_help: str) -> dict[str, str]:
    """The flags of the tools that run the streaming loader (``--shards``, ``--cache``, image
    and batch sizes, fitting backend, device, splats and iterations); returns their map to
    the config's ``data.*``/``fit.*`` keys, for :func:`parse_tool_args`'s ``flags``."""
    from streamfit.fit import BACKENDS

    parser.add_argument("--shards", help=shards_help)
    parser.add_argument("--cache", help="splat cache directory (default: none)")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--backend", choices=("auto", *BACKENDS))
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--gaussians", type=int)
    parser.add_argument("--iters", type=int)
    data = {
        "shards": "shards",
        "cache": "cache_dir",
        "image_size": "image_size",
        "batch_size": "batch_size",
    }
    flags = {dest: f"data.{key}" for dest, key in data.items()}
    flags.update({dest: f"fit.{dest}" for dest in ("backend", "device", "gaussians", "iters")})
    return flags


def int_list(text: str) -> list[int]:
    """A flag's comma-separated integers >= 0 (``"256,4096"``); a ``ValueError`` naming the
    text otherwise (argparse turns it into a usage error)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise ValueError(f"expected a comma list of integers >= 0, got {text!r}")
    return values


def is_override(item: str) -> bool:
    """``key=value`` rather than a path (an existing file named ``a=b`` stays a path)."""
    return bool(_OVERRIDE.match(item)) and not Path(item).exists()


def parse_tool_args(
    parser: argparse.ArgumentParser,
    schema: type[T],
    argv: Sequence[str] | None = None,
    flags: Mapping[str, str] | None = None,
    defaults: Sequence[str] = (),
    section: str | None = None,
    default_config: str | None = None,
) -> tuple[argparse.Namespace, T]:
    """Parse ``argv`` into the tool's namespace and a validated ``schema`` instance.

    ``flags`` maps a flag's ``dest`` to the config key it sets (default: every flag whose
    ``dest`` is a top-level field of ``schema``); a flag left at ``None`` sets nothing.
    ``defaults`` (``key=value``) are the tool's own defaults, below the config file;
    ``section``: a config file with this top-level key (a recipe's) gives that part;
    ``default_config``: the file read when no ``--config`` is given. A bad key or value
    exits with a one-line error naming it.
    """
    setup_logging(stream=sys.stderr)
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [item for item in argv if is_override(item)]
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help=f"{schema.__name__} overrides"
    )
    args = parser.parse_args([item for item in argv if item not in overrides])
    if flags is None:
        names = set(getattr(schema, "__dataclass_fields__", {}))
        flags = {dest: dest for dest in vars(args) if dest in names}
    given = [
        f"{key}={getattr(args, dest)}"
        for dest, key in flags.items()
        if getattr(args, dest) is not None
    ]
    args.overrides = overrides
    args.config = args.config or default_config
    try:
        cfg = load_config(
            schema, args.config, [*given, *overrides], defaults=defaults, section=section
        )
    except (ConfigError, ValueError) as err:
        parser.error(str(err))
    return args, cfg


def parse_recipe_args(
    schema: type[T], argv: Sequence[str] | None, default_config: str, description: str | None
) -> T:
    """A recipe's config tree from ``[--config FILE] [key=value ...]`` (``default_config``
    without ``--config``). DeepSpeed's launcher adds ``--local_rank=N``: accepted and ignored
    (the rank comes from the environment)."""
    parser = tool_parser(description, schema)
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    return parse_tool_args(parser, schema, argv, default_config=default_config)[1]
