"""Configs from YAML files or plain data (every value checked against its field's type, an
unknown key an error naming it), back to plain data, and ``--set section.key=value`` overrides."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any, Mapping, Sequence

import yaml

from det_al.config.checks import validate
from det_al.config.sections import Config
from det_al.errors import InputError


def _coerce(value: Any, tp: Any, where: str, source: str | None) -> Any:
    """Check ``value`` against the annotation ``tp`` (as a string or type); lists become tuples."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, a, where, source)
            except InputError as e:
                errors.append(e)
        raise errors[-1]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where} must be a list, got {value!r}", source)
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, where, source) for v in value)
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise InputError(f"{where} must be a mapping, got {value!r}", source)
        return dict(value)
    if tp is Any:
        return value
    if tp is type(None):
        if value is not None:
            raise InputError(f"{where} must be null, got {value!r}", source)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where} must be a number, got {value!r}", source)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{where} must be an integer, got {value!r}", source)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"{where} must be true or false, got {value!r}", source)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise InputError(f"{where} must be a string, got {value!r}", source)
        return value
    return value


def _build(cls: type, data: Any, where: str, source: str | None) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise InputError(f"{where or 'config'} must be a mapping, got {type(data).__name__}", source)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise InputError(f"unknown config key '{key}' (valid: {', '.join(sorted(names))})", source)
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key, source)
        else:
            kwargs[name] = _coerce(value, tp, key, source)
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any], source: str | None = None) -> Config:
    """Build and validate a :class:`Config` from plain data (as YAML gives it)."""
    config = _build(Config, data, "", source)
    validate(config, source)
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain data (lists, dicts) that :func:`config_from_dict` turns back into ``config``."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, Mapping):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"passes.dropout=[0.1,0.2]"`` -> ``(["passes", "dropout"], [0.1, 0.2])``."""
    if "=" not in text:
        raise InputError(f"--set expects section.key=value, got '{text}'")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise InputError(f"--set {key}: cannot parse value '{raw}': {e}") from e
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to plain config data (a copy is returned)."""
    import copy

    data = copy.deepcopy(data)
    for text in overrides or []:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"--set {'.'.join(path)}: '{part}' is not a section")
        node[path[-1]] = value
    return data


def override_config(config: Config, overrides: Sequence[str], source: str | os.PathLike | None = None) -> Config:
    """``config`` with ``--set`` overrides applied and validated (``config`` is not changed).

    The one place a built config gets overrides (``det-al score``/``evaluate`` over a
    checkpoint's config, :func:`det_al.score_images`); ``source`` names the origin in errors.
    """
    if not overrides:
        return config
    source = None if source is None else os.fspath(source)
    return config_from_dict(apply_overrides(config_to_dict(config), list(overrides)), source)


def passes_overrides(
    passes: int | None = None,
    dropout: float | str | Sequence[float] | None = None,
    tta: str | Sequence[str] | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    fast: bool | None = None,
) -> list[str]:
    """``--set`` overrides of the ``passes`` section from the shortcuts of ``det-al score`` and
    :func:`det_al.score_images`; ``None`` leaves a key alone.

    ``dropout`` is one rate or one per pass (a list, or ``"0.1,0.2"``); a list of rates without
    ``passes`` also sets ``passes`` to its length. ``tta`` is a list of views or ``"hflip,scale:0.8"``.

    >>> passes_overrides(dropout="0.1,0.2", tta="hflip")
    ['passes.dropout=[0.1,0.2]', 'passes.passes=2', "passes.tta=['hflip']"]
    """
    out = []
    if passes is not None:
        out.append(f"passes.passes={passes}")
    if dropout is not None:
        if isinstance(dropout, str):
            rates = [r.strip() for r in dropout.split(",") if r.strip()]
        elif isinstance(dropout, (int, float)):
            rates = [repr(float(dropout))]
        else:
            rates = [repr(float(r)) for r in dropout]
        if not rates:
            raise InputError(f"dropout: expected a rate or a list of rates, got {dropout!r}")
        multiple = len(rates) > 1 or not isinstance(dropout, (str, int, float))
        out.append(f"passes.dropout=[{','.join(rates)}]" if multiple else f"passes.dropout={rates[0]}")
        if multiple and passes is None:
            out.append(f"passes.passes={len(rates)}")
    if tta is not None:
        views = [v.strip() for v in (tta.split(",") if isinstance(tta, str) else tta) if v.strip()]
        out.append("passes.tta=[" + ",".join(f"'{v}'" for v in views) + "]")
    for key, value in (("seed", seed), ("batch_size", batch_size), ("num_workers", num_workers)):
        if value is not None:
            out.append(f"passes.{key}={value}")
    if fast is not None:
        out.append(f"passes.fast={'true' if fast else 'false'}")
    return out


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply ``--set`` overrides and validate."""
    data: Any = {}
    source = None if path is None else os.fspath(path)
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except FileNotFoundError as e:
            raise InputError("config file not found", source) from e
        except yaml.YAMLError as e:
            raise InputError(f"not valid YAML: {e}".replace("\n", " "), source) from e
        if not isinstance(data, dict):
            raise InputError("config must be a YAML mapping", source)
    data = apply_overrides(data, overrides or [])
    return config_from_dict(data, source)
