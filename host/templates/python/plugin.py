"""`{{name}}`: a Weir plugin in Python, built by componentize-py.

Request phase: sets the request header `x-hello` to the configured message,
so the upstream sees it. Response phase: sets `x-plugin: {{name}}` on the
answer. Config: `message` (text, optional); anything else is refused.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import config, types
from wit_world.imports.types import (
    HeaderInterest_Named,
    HeaderOp_Set,
    PluginInfo,
    RequestAction_Continue,
    RequestChanges,
    ResponseChanges,
)


def parse(text: str) -> str:
    """Check the config JSON and return the message; raise Err when it is wrong."""
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise Err(f"config is not JSON: {e}")
    if not isinstance(raw, dict):
        raise Err("config must be a table")
    for key in raw:
        if key != "message":
            raise Err(f"unknown field `{key}`, expected `message`")
    message = raw.get("message", "hello from {{name}}")
    if not isinstance(message, str) or not message or any(ord(c) < 0x20 or ord(c) == 0x7F for c in message):
        raise Err("message must be non-empty text without control characters")
    return message


# The config never changes during an instance's life: parse it once.
_message = None


def message() -> str:
    global _message
    if _message is None:
        _message = parse(config.get())
    return _message


class Guest(exports.Guest):
    def validate_config(self, config: str) -> PluginInfo:
        # Runs once at load: raising Err makes Weir refuse to start.
        parse(config)
        # Given nothing it does not read: no header, connection or property.
        return PluginInfo(on_request=True, on_response=True,
                          request_body=False, response_body=False,
                          request_headers=HeaderInterest_Named([]),
                          response_headers=HeaderInterest_Named([]),
                          connection=False, properties=False)

    def on_request(self, req: types.Request) -> types.RequestAction:
        return RequestAction_Continue(RequestChanges(
            method=None, path=None, query=None,
            headers=[HeaderOp_Set(("x-hello", message()))],
            upstream=None, properties=[], cache=None, body=None,
        ))

    def on_response(self, resp: types.ResponseHead) -> types.ResponseChanges:
        return ResponseChanges(status=None, headers=[HeaderOp_Set(("x-plugin", "{{name}}"))], body=None)
