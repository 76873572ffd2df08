"""Config machinery shared by recipes and tools: dataclass schemas -> omegaconf structured
configs, YAML files plus ``key=value`` overrides, printed and saved resolved.

Each part of streamfit owns its config dataclass (``FitConfig`` in ``streamfit.fit.config``,
...); a recipe composes them into one tree and calls :func:`load_config`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema (names the key)."""


def load_config(
    schema: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    defaults: Sequence[str] = (),
    section: str | None = None,
) -> T:
    """Build a ``schema`` instance from its defaults, then ``defaults`` (``key=value``: a
    tool's own), then a YAML file, then ``key=value`` overrides.

    With ``section`` (e.g. ``fit``), a file with that top-level key contributes that part
    only: a tool reads its settings out of a recipe's config or a saved run's.

    Unknown keys and values of the wrong type raise :class:`ConfigError` naming the key.
    The result is a plain dataclass instance (validated by its ``__post_init__``).
    """
    merged = OmegaConf.structured(schema)
    try:
        merged = _apply(merged, defaults)
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"config file not found: {path}")
            data = OmegaConf.load(path)
            if section is not None and isinstance(data, DictConfig) and section in data:
                data = data[section]
            merged = OmegaConf.merge(merged, data)
        merged = _apply(merged, overrides)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except (ConfigKeyError, ValidationError) as err:
        key = getattr(err, "full_key", None)
        first = str(err.msg).splitlines()[0]  # omegaconf appends key and type lines
        raise ConfigError(f"bad config value for {key!r}: {first}" if key else first) from None


def _apply(merged: Any, overrides: Sequence[str]) -> Any:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
    return merged


def to_yaml(config: Any) -> str:
    """The resolved config as YAML (for printing at start and saving with a run)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(to_yaml(config))


def check_choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    """A ``ValueError`` naming ``key`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_at_least(**values: tuple[float, float]) -> None:
    """A ``ValueError`` naming the first ``key=(value, lowest)`` whose value is below its lowest
    (``key``: the field's dotted name with ``__`` for the dot, e.g. ``fit__iters``)."""
    for key, (value, lowest) in values.items():
        if value < lowest:
            name = key.replace("__", ".")
            raise ValueError(f"{name} must be >= {lowest}, got {value}")
