"""
Pruner specifications as text: ``name`` or ``name:key=value,key=value``.

One syntax for every place a user picks a pruner with settings (``bench``, ``eval``,
``sim eval`` and the policy node's ``pruner_options`` parameter), so each documented,
uncertain choice of a method can be varied without code, e.g.
``info_entropy:reuse=false`` (KV reuse off) or ``tri_stage:stage1=false``.

Values are read according to the type of the config field they set: ``true``/``false`` for
flags, numbers for int/float fields, ``none`` for optional fields, ``/``-separated items for
tuples (``tau_layers=1/2``), text otherwise. A wrong key, value or type raises ``ValueError``
naming the pruner's known fields.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
import typing
from typing import Any, Union

from vla_pruned_ros.pruning.base import PRUNERS, Pruner, available_pruners, create_pruner

_TRUE = ('true', 'yes', 'on', '1')
_FALSE = ('false', 'no', 'off', '0')


@dataclass(frozen=True)
class PrunerSpec:
    """A registered pruner's name and the config fields that override its defaults."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The canonical text of this spec (parses back to an equal spec)."""
        if not self.options:
            return self.name
        return self.name + ':' + ','.join(
            f'{key}={format_value(value)}' for key, value in self.options.items()
        )

    def create(self) -> Pruner:
        """A fresh pruner with these settings."""
        return create_pruner(self.name, **self.options)


def format_value(value: Any) -> str:
    """Text of one option value, in the syntax :func:`parse_pruner_spec` reads."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if value is None:
        return 'none'
    if isinstance(value, (tuple, list)):
        return '/'.join(format_value(item) for item in value)
    return f'{value:g}' if isinstance(value, float) else str(value)


def _convert(kind: Any, text: str, where: str) -> Any:
    origin = typing.get_origin(kind)
    if origin is Union:  # Optional[X]
        if text.lower() == 'none':
            return None
        inner = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return _convert(inner[0], text, where)
    if kind is tuple or origin is tuple:
        args = [arg for arg in typing.get_args(kind) if arg is not Ellipsis]
        item_kind = args[0] if args else int
        return tuple(_convert(item_kind, item, where) for item in text.split('/') if item)
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f'{where}: expected true or false, got {text!r}')
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f'{where}: expected {kind.__name__}, got {text!r}') from None
    return text


def parse_options(name: str, text: str) -> dict[str, Any]:
    """
    Parse ``key=value,key=value`` into config overrides for the pruner ``name``.

    The result is checked by building the pruner once, so invalid combinations (for example
    tri_stage with stages 1 and 2 both off) raise here too.
    """
    if name not in PRUNERS:
        raise ValueError(f'unknown pruner {name!r}; available: {", ".join(available_pruners())}')
    config_class = PRUNERS[name].config_class
    hints = typing.get_type_hints(config_class)
    known = [item.name for item in fields(config_class)]
    options: dict[str, Any] = {}
    for part in (piece.strip() for piece in text.split(',')):
        if not part:
            continue
        key, separator, value = part.partition('=')
        key = key.strip()
        if not separator or not key:
            raise ValueError(f'{name}: option {part!r} is not key=value')
        if key not in known:
            raise ValueError(f'{name}: unknown option {key!r}; known: {", ".join(known)}')
        options[key] = _convert(hints[key], value.strip(), f'{name}.{key}')
    create_pruner(name, **options)
    return options


def expand_all(values: Sequence[str]) -> list[str]:
    """Replace each ``all`` among pruner names/specs by every registered pruner's name."""
    expanded: list[str] = []
    for value in values:
        expanded += available_pruners() if value.strip() == 'all' else [value]
    return list(dict.fromkeys(expanded))


def parse_pruner_specs(values: Sequence[str]) -> list[PrunerSpec]:
    """Parse a command line's ``--pruners`` (names, specs, ``all``) into specs."""
    return [parse_pruner_spec(value) for value in expand_all(values)]


def parse_options_by_pruner(text: str) -> dict[str, dict[str, Any]]:
    """
    Parse ``name:key=value,...;name:key=value,...`` (the node's ``pruner_options``).

    Returns the overrides per pruner name; each pruner may appear once. Empty text: none.
    """
    result: dict[str, dict[str, Any]] = {}
    for part in (piece.strip() for piece in text.split(';')):
        if not part:
            continue
        if ':' not in part:
            raise ValueError(f'pruner options {part!r}: expected name:key=value,...')
        spec = parse_pruner_spec(part)
        if spec.name in result:
            raise ValueError(f'pruner options: {spec.name} appears twice')
        result[spec.name] = spec.options
    return result


def parse_pruner_spec(text: str) -> PrunerSpec:
    """Parse ``name`` or ``name:key=value,...`` (see the module docstring)."""
    name, _, option_text = text.strip().partition(':')
    return PrunerSpec(name.strip(), parse_options(name.strip(), option_text))
