"""A Label Studio server as the manual oracle's other end (``annotation.url``), through
label-studio-sdk's client: the round's tasks are pushed into the run's project, and
``annotate --import label-studio`` fetches that project's JSON export.

The API token comes from the environment (``LABEL_STUDIO_API_KEY``, the SDK's own name) and is
never logged or written. One project per run (titled after the run); every task carries its
round, so a later round's push adds its tasks beside the earlier ones and an import reads only
its own round's.
"""

from __future__ import annotations

import json
import os

TOKEN_ENV = "LABEL_STUDIO_API_KEY"
EXPORT_SOURCE = "label-studio"  # ``annotate --import label-studio``: fetch from the server


def project_title(run_name: str) -> str:
    return f"s4al-ray: {run_name}"  # Label Studio wants at least 3 characters


def _client(url: str):
    from label_studio_sdk import LabelStudio

    from s4al_ray.config import ConfigError

    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise ConfigError(
            f"annotation.url={url}: set {TOKEN_ENV} to a Label Studio access token "
            "(Account & Settings > Access Token)"
        )
    return LabelStudio(base_url=url, api_key=token, timeout=60)


def check_server(url: str) -> None:
    """Refuse, before any work, a server that does not answer or a token it does not accept."""
    from label_studio_sdk.core.api_error import ApiError

    from s4al_ray.config import ConfigError

    client = _client(url)
    try:
        client.projects.list(page_size=1)
    except ApiError as err:
        reason = "the token was refused" if err.status_code in (401, 403) else "it failed"
        raise ConfigError(
            f"annotation.url={url}: {reason} (HTTP {err.status_code}); check {TOKEN_ENV} "
            "and the server's address"
        ) from None
    except Exception as err:  # connection refused, DNS, TLS: the SDK passes httpx's through
        raise ConfigError(
            f"annotation.url={url}: no Label Studio server answered ({type(err).__name__}); "
            "start it or fix the address"
        ) from None


def _project_id(client, title: str, config: str | None) -> int | None:
    for project in client.projects.list(title=title):
        if project.title == title:
            return project.id
    if config is None:
        return None
    return client.projects.create(title=title, label_config=config).id


def push_tasks(
    url: str, title: str, tasks: list[dict], config: str, local_dirs: list[str]
) -> tuple[int, int]:
    """Import ``tasks`` into project ``title`` (created with ``config`` if new); tasks already
    there (same image and round: a rerun of the stop) are not imported twice. ``local_dirs``
    (absolute, inside the server's local-files root) are connected as local storages: Label
    Studio serves a local file only to projects with a storage above it.
    Returns (project id, tasks imported)."""
    client = _client(url)
    project = _project_id(client, title, config)
    connected = {s.path for s in client.import_storage.local.list(project=project)}
    for path in sorted(set(local_dirs) - connected):
        client.import_storage.local.create(project=project, path=path, title="s4al-ray images")
    present = {
        (t.data.get("sample_id"), t.data.get("round"))
        for t in client.tasks.list(project=project, fields="task_only")
    }
    new = [t for t in tasks if (t["data"]["sample_id"], t["data"]["round"]) not in present]
    if new:
        client.projects.import_tasks(project, request=new)
    return project, len(new)


def fetch_export(url: str, title: str) -> str:
    """The project's JSON export (the same text as 'Export > JSON' in the browser)."""
    client = _client(url)
    project = _project_id(client, title, None)
    if project is None:
        raise ValueError(f"{url} has no project {title!r}: the run has not pushed a round yet")
    return json.dumps(client.projects.exports.as_json(project))
