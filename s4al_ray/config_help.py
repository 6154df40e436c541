"""``python run.py --help-config [section]``: every config key, its type, default, range and doc,
read from the schema itself so the help can never fall behind the code."""

from __future__ import annotations

import dataclasses
import difflib
import textwrap
import typing

from s4al_ray.config import ConfigError
from s4al_ray.config_schema import ExperimentConfig


def _rows(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    hints = typing.get_type_hints(cls)
    rows = []
    defaults = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += _rows(tp, f"{prefix}{f.name}.")
            continue
        meta = f.metadata
        limits = []
        if meta.get("choices"):
            limits.append("one of " + ", ".join(map(str, meta["choices"])))
        if meta.get("lo") is not None:
            limits.append(f">= {meta['lo']}")
        if meta.get("hi") is not None:
            limits.append(f"<= {meta['hi']}")
        doc = meta.get("doc", "")
        if f"{prefix}{f.name}" == "acquisition.function":  # the registry is the list of choices
            from s4al_ray.scores import SCORES

            limits.append("one of " + ", ".join(SCORES))
        if limits:
            doc = f"{doc} [{'; '.join(limits)}]" if doc else f"[{'; '.join(limits)}]"
        type_name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
        rows.append((f"{prefix}{f.name}", type_name, repr(getattr(defaults, f.name)), doc))
    return rows


def sections() -> list[str]:
    return sorted({key.split(".")[0] for key, *_ in _rows(ExperimentConfig) if "." in key})


def describe_config(section: str | None = None, width: int = 100) -> str:
    """The help text for every key, or for the keys under ``section`` (e.g. ``train``,
    ``data.synthetic``)."""
    rows = _rows(ExperimentConfig)
    if section:
        rows = [r for r in rows if r[0] == section or r[0].startswith(section + ".")]
        if not rows:
            valid = sections()
            close = difflib.get_close_matches(section, valid, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(
                f"--help-config: no section '{section}'; {hint}sections: " + ", ".join(valid)
            )
    key_width = max(len(r[0]) for r in rows)
    lines = []
    for key, type_name, default, doc in rows:
        lines.append(f"{key:<{key_width}}  {type_name} = {default}")
        for line in textwrap.wrap(doc, width - key_width - 4):
            lines.append(f"{'':<{key_width}}    {line}")
    head = "Config keys (set in a YAML file or as key.path=value on the command line)"
    return head + (f", section '{section}'" if section else "") + ":\n\n" + "\n".join(lines)
