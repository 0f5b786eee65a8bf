"""Command-line overrides of frozen config dataclasses, big_vision style: ``--set a.b=value``.

An experiment holds its settings in one frozen dataclass (library configs nested inside,
e.g. ``data.scm.latent_dim``). Any field, at any depth, is set from the command line with
``--set path=value`` (repeatable); a few frequently used fields also get a short flag (an
*alias*, e.g. ``--steps`` for ``crl.steps``). Values are parsed according to the field's
annotated type, never evaluated as code:

* ``int``/``float``/``bool``: JSON literals (``3``, ``1e-3``, ``true``); ``bool`` also takes
  ``false``/``0``/``1``;
* ``str``: the text as given (or a JSON string);
* ``tuple[X, ...]``: a JSON list (``[4, 8]``) or comma-separated items (``relu,topk``), each
  parsed as ``X``;
* ``X | None``: ``null`` or ``None`` give ``None``.

The new config is built with :func:`dataclasses.replace`, so each dataclass's
``__post_init__`` validation runs on the result. Example::

    cfg = apply_overrides(SyntheticConfig(), ["data.scm.latent_dim=3", "crl.steps=500"])

    p = argparse.ArgumentParser()
    add_config_flags(p, aliases={"--steps": "crl.steps"})
    args = p.parse_args(argv)
    cfg = config_from_args(SyntheticConfig(), args, aliases={"--steps": "crl.steps"})
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["add_config_flags", "apply_overrides", "config_from_args", "override", "parse_config",
           "parse_value"]


def _field_types(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception as err:  # an annotation that cannot be resolved
        raise TypeError(f"cannot resolve the field types of {cls.__name__}: {err}") from err


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return None


def parse_value(text: str, tp: Any, *, name: str = "value") -> Any:
    """Parses the command-line ``text`` as a value of type ``tp`` (no ``eval``).

    Args:
        text: the text after ``=``.
        tp: the field's annotated type (``int``, ``float``, ``bool``, ``str``,
            ``tuple[X, ...]``, ``X | None``).
        name: the field path, for error messages.

    Raises:
        ValueError: the text is not a value of that type (the message names the field).
    """
    union = _union_args(tp)
    if union is not None:
        options = [a for a in union if a is not type(None)]
        if type(None) in union and text.strip() in ("null", "None", "none"):
            return None
        errors = []
        for option in options:
            try:
                return parse_value(text, option, name=name)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError("; ".join(errors))
    origin = typing.get_origin(tp)
    if origin is tuple or tp is tuple:
        args = typing.get_args(tp)
        item = args[0] if args else str
        try:
            items = json.loads(text)
            if not isinstance(items, list):
                raise ValueError
            items = [json.dumps(v) if not isinstance(v, str) else v for v in items]
        except ValueError:
            items = [s.strip() for s in text.split(",") if s.strip()]
        return tuple(parse_value(s, item, name=f"{name}[{i}]") for i, s in enumerate(items))
    if tp is str:
        try:
            value = json.loads(text)
        except ValueError:
            return text
        return value if isinstance(value, str) else text
    if tp in (int, float, bool):
        try:
            value = json.loads(text.strip().lower() if tp is bool else text)
        except ValueError:
            value = None
        if tp is bool and value in (0, 1) and not isinstance(value, bool):
            value = bool(value)
        ok = (isinstance(value, bool) if tp is bool
              else isinstance(value, int) and not isinstance(value, bool) if tp is int
              else isinstance(value, (int, float)) and not isinstance(value, bool))
        if not ok:
            raise ValueError(f"{name} must be {tp.__name__}, got {text!r}")
        return float(value) if tp is float else value
    if tp is Any:
        try:
            return json.loads(text)
        except ValueError:
            return text
    if dataclasses.is_dataclass(tp):
        raise ValueError(f"{name} is a {tp.__name__}: set its fields ({name}.<field>=...)")
    raise ValueError(f"{name}: fields of type {tp} cannot be set from the command line")


def override(cfg: T, assignment: str) -> T:
    """``cfg`` with one field (``path=value``, ``path`` dotted through nested configs) set.

    Raises:
        ValueError: no ``=``, an unknown field (the message lists the valid ones), a value
            of the wrong type, or a value the config's own validation rejects.
    """
    if "=" not in assignment:
        raise ValueError(f"override {assignment!r} must look like path.to.field=value")
    path, text = assignment.split("=", 1)
    path = path.strip()
    if not path:
        raise ValueError(f"override {assignment!r} names no field")
    return _set(cfg, path.split("."), text, path)


def _set(cfg: Any, keys: list[str], text: str, path: str) -> Any:
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise ValueError(f"cannot set {path!r}: {type(cfg).__name__} is not a config dataclass")
    names = {f.name for f in dataclasses.fields(cfg) if f.init}
    head = keys[0]
    if head not in names:
        raise ValueError(f"{type(cfg).__name__} has no field {head!r} (in {path!r}); fields: "
                         f"{sorted(names)}")
    if len(keys) > 1:
        value = _set(getattr(cfg, head), keys[1:], text, path)
    else:
        value = parse_value(text, _field_types(type(cfg))[head], name=path)
    try:
        return dataclasses.replace(cfg, **{head: value})
    except (TypeError, ValueError) as err:
        raise ValueError(f"--set {path}={text}: {err}") from err


def apply_overrides(cfg: T, assignments: Sequence[str] | None) -> T:
    """``cfg`` with every ``path=value`` of ``assignments`` applied in order."""
    for assignment in assignments or ():
        cfg = override(cfg, assignment)
    return cfg


def _aliases(aliases: Mapping[str, str | Sequence[str]] | None) -> dict[str, tuple[str, ...]]:
    return {flag: (paths,) if isinstance(paths, str) else tuple(paths)
            for flag, paths in (aliases or {}).items()}


def add_config_flags(parser: argparse.ArgumentParser,
                     aliases: Mapping[str, str | Sequence[str]] | None = None) -> None:
    """Adds ``--set PATH=VALUE`` (repeatable) and one flag per alias to ``parser``.

    Args:
        parser: the script's parser.
        aliases: ``{"--flag": "path"}`` (or several paths set to the same value) for the
            short flags a script keeps; their values are parsed like ``--set`` values.
    """
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                        help="override any config field, e.g. --set data.scm.latent_dim=3")
    for flag, paths in _aliases(aliases).items():
        parser.add_argument(flag, default=None, metavar="VALUE",
                            help=f"sets {', '.join(paths)}")


def config_from_args(base: T, args: argparse.Namespace,
                     aliases: Mapping[str, str | Sequence[str]] | None = None) -> T:
    """``base`` with the alias flags given on the command line, then ``--set``, applied."""
    assignments = []
    for flag, paths in _aliases(aliases).items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            assignments += [f"{p}={value}" for p in paths]
    return apply_overrides(base, [*assignments, *getattr(args, "set", [])])


def parse_config(parser: argparse.ArgumentParser, default: T, argv: Sequence[str] | None = None,
                 *, aliases: Mapping[str, str | Sequence[str]] | None = None,
                 tiny: T | None = None) -> tuple[argparse.Namespace, T]:
    """Parses ``argv`` into ``(args, config)`` for an experiment script.

    Adds ``--set``, the alias flags and (when a ``tiny`` preset is given) ``--tiny`` to the
    script's ``parser``; the config is ``default`` (or ``tiny``) with the command line's
    overrides applied. A bad override exits through ``parser.error`` with its message.
    On a multi-host launch it calls ``jax.distributed.initialize()`` (see
    :func:`jaxcrl.train.mesh.initialize_distributed`).
    """
    if tiny is not None:
        parser.add_argument("--tiny", action="store_true", help="a seconds-long run (tests)")
    add_config_flags(parser, aliases)
    args = parser.parse_args(argv)
    base = tiny if getattr(args, "tiny", False) else default
    try:
        cfg = config_from_args(base, args, aliases)
    except ValueError as err:
        parser.error(str(err))
    from jaxcrl.train.mesh import initialize_distributed

    initialize_distributed()  # a multi-host launch (coordinator, SLURM, MPI, TPU pod) joins up
    return args, cfg
