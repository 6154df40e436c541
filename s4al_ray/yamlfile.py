"""Reading YAML the way users expect: duplicate keys are errors, ``1e-3`` is a number.

PyYAML's safe loader (YAML 1.1) lets the last of two equal keys win silently (a whole ``train:``
block could vanish) and reads ``1e-3`` as a *string*, because 1.1 floats need a dot. This loader
keeps everything else of ``yaml.safe_load`` (no object construction) and fixes both.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class YamlError(ValueError):
    """Invalid or ambiguous YAML; the message names the file, the line and the key."""


# Floats as YAML 1.2 writes them: an exponent without a dot (1e-3) is a float too. Plain
# integers never match, so they stay ints.
_FLOAT = re.compile(
    r"""^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+
                       |[-+]?(?:[0-9][0-9_]*)?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                       |[-+]?[0-9][0-9_]*\.
                       |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
    re.X,
)


def _with_yaml12_floats(cls: type) -> type:
    """``cls`` resolving ``_FLOAT`` as float, on a copy of its resolvers: the stock SafeLoader
    and SafeDumper (used by other libraries in this process) are left as they are. The loader
    then reads ``1e-3`` as a float; the dumper quotes strings that look like one."""
    cls.yaml_implicit_resolvers = {k: list(v) for k, v in cls.yaml_implicit_resolvers.items()}
    for first in "-+0123456789.":
        cls.yaml_implicit_resolvers.setdefault(first, []).insert(
            0, ("tag:yaml.org,2002:float", _FLOAT)
        )
    return cls


@_with_yaml12_floats
class _Loader(yaml.SafeLoader):
    pass


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    # Only the mapping's own keys: a key that overrides one merged in with ``<<: *anchor`` is
    # the point of the merge, not a duplicate.
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: construct_mapping reports it
            continue
        if first is not None:
            raise YamlError(
                f"line {line}: duplicate key '{key}' (first at line {first}); keep one of them"
            )
        seen[key] = line
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_yaml(text: str, where: str = "") -> Any:
    """Parse ``text``; ``where`` (a file name, "command line") prefixes every error."""
    prefix = f"{where}: " if where else ""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except YamlError as err:
        raise YamlError(f"{prefix}{err}") from None
    except yaml.YAMLError as err:
        raise YamlError(f"{prefix}not valid YAML: {err}") from None


@_with_yaml12_floats
class _Dumper(yaml.SafeDumper):
    pass


def dump_yaml(data: Any) -> str:
    """YAML that :func:`load_yaml` reads back to the same values (keys in their order)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)
