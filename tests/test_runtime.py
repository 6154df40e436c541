"""Local Ray start-up output: what a user sees first."""

from __future__ import annotations

import logging

from ray._private.authentication import authentication_token_setup as ray_auth

from s4al_ray import runtime


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_default_token_notice_hidden_but_disabled_auth_still_warns():
    # Ray's own warning functions: the test breaks, as it should, if Ray renames the logger or
    # rewords the notice the filter matches.
    assert ray_auth.logger.name == runtime.TOKEN_AUTH_LOGGER
    collect = _Collect()
    ray_auth.logger.addHandler(collect)
    try:
        runtime._hide_default_token_notice()
        runtime._hide_default_token_notice()  # idempotent: one filter, not one per connect
        ray_auth._warn_token_auth_enabled()
        ray_auth._warn_token_auth_disabled()
    finally:
        ray_auth.logger.removeHandler(collect)
    assert sum(isinstance(f, runtime._DropDefaultTokenNotice) for f in ray_auth.logger.filters) == 1
    assert not any(m.startswith(runtime.DEFAULT_TOKEN_NOTICE) for m in collect.messages)
    assert any("Token authentication is disabled" in m for m in collect.messages)
