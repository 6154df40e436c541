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


class _Loader(yaml.SafeLoader):
    pass


# A copy, so the stock SafeLoader (used by other libraries in this process) is left as it is.
_Loader.yaml_implicit_resolvers = {
    k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for first in "-+0123456789.":
    _Loader.yaml_implicit_resolvers.setdefault(first, []).insert(
        0, ("tag:yaml.org,2002:float", _FLOAT)
    )


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise YamlError(
                f"line {line}: duplicate key '{key}' (first at line {seen[key]}); keep one of them"
            )
        seen[key] = line
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
