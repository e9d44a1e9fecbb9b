"""Security response headers for Weir, in Python (componentize-py).

Response phase only: adds HSTS (https requests, or http too with
`hsts_on_http`), X-Content-Type-Options, X-Frame-Options, Referrer-Policy
and Content-Security-Policy; keeps a value the upstream already set unless
`override = true`; removes the headers listed in `remove_headers`.

Config (proxy.toml, `[plugins.NAME.config]`), every key optional:
    hsts = true                       # false: never send HSTS
    hsts_max_age = 31536000           # seconds
    hsts_include_subdomains = false
    hsts_preload = false              # needs include_subdomains, max_age >= 1 year
    hsts_on_http = false
    content_type_options = true       # X-Content-Type-Options: nosniff
    frame_options = "DENY"            # "SAMEORIGIN", or false
    referrer_policy = "strict-origin-when-cross-origin"   # or false
    content_security_policy = "default-src 'self'"        # none by default
    override = false
    remove_headers = ["server", "x-powered-by"]

Contract weir:plugin@0.2.0: the response phase is given only the response
headers the plugin sets or removes. Whether the request was https is the
one request fact it needs, and only when HSTS depends on it: then a request
phase, given no headers, leaves the property `security-headers.https` for
the response phase. Otherwise there is no request phase at all.
"""

import json
import re

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import config, types
from wit_world.imports.types import (
    HeaderInterest_All,
    HeaderInterest_Named,
    HeaderOp_Remove,
    HeaderOp_Set,
    PluginInfo,
    RequestAction_Continue,
    RequestChanges,
    ResponseChanges,
    Value_Flag,
)

DEFAULTS = {
    "hsts": True,
    "hsts_max_age": 31536000,
    "hsts_include_subdomains": False,
    "hsts_preload": False,
    "hsts_on_http": False,
    "content_type_options": True,
    "frame_options": "DENY",
    "referrer_policy": "strict-origin-when-cross-origin",
    "content_security_policy": None,
    "override": False,
    "remove_headers": [],
}
BOOLS = ("hsts", "hsts_include_subdomains", "hsts_preload", "hsts_on_http",
         "content_type_options", "override")
FRAME_OPTIONS = ("DENY", "SAMEORIGIN")
REFERRER_POLICIES = (
    "no-referrer", "no-referrer-when-downgrade", "origin",
    "origin-when-cross-origin", "same-origin", "strict-origin",
    "strict-origin-when-cross-origin", "unsafe-url",
)
# Headers that frame the message belong to the host: a plugin that touches
# them fails its call, so refuse them at load instead.
HOST_HEADERS = ("connection", "content-length", "host", "keep-alive",
                "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade")
TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9a-z]+$")
ONE_YEAR = 31536000
# What the request phase hands the response phase.
HTTPS = "security-headers.https"
# The host takes at most this many header names in an interest declaration.
MAX_NAMED = 64


class Settings:
    """The checked config and the header values it produces."""

    def __init__(self, raw: dict):
        self.override = raw["override"]
        self.remove = list(raw["remove_headers"])
        self.hsts = None
        if raw["hsts"]:
            hsts = f"max-age={raw['hsts_max_age']}"
            if raw["hsts_include_subdomains"]:
                hsts += "; includeSubDomains"
            if raw["hsts_preload"]:
                hsts += "; preload"
            self.hsts = hsts
        self.hsts_on_http = raw["hsts_on_http"]
        # (name, value) pairs sent on every response.
        self.always = []
        if raw["content_type_options"]:
            self.always.append(("x-content-type-options", "nosniff"))
        if raw["frame_options"]:
            self.always.append(("x-frame-options", raw["frame_options"]))
        if raw["referrer_policy"]:
            self.always.append(("referrer-policy", raw["referrer_policy"]))
        if raw["content_security_policy"] is not None:
            self.always.append(("content-security-policy", raw["content_security_policy"]))

    def needs_scheme(self) -> bool:
        """Whether a response's headers depend on the request's scheme."""
        return self.hsts is not None and not self.hsts_on_http

    def response_headers(self):
        """The response headers the response phase reads: what it would
        set (unless it overrides anyway) and what it removes."""
        names = list(self.remove)
        if not self.override:
            names += [name for name, _ in self.always]
            if self.hsts is not None:
                names.append("strict-transport-security")
        names = list(dict.fromkeys(names))
        return HeaderInterest_Named(names) if len(names) <= MAX_NAMED else HeaderInterest_All()


def parse(text: str) -> Settings:
    """Check the config JSON; raise Err with a human message when it is wrong."""
    try:
        given = json.loads(text)
    except ValueError as e:
        raise Err(f"config is not JSON: {e}")
    if not isinstance(given, dict):
        raise Err("config must be a table")
    for key in given:
        if key not in DEFAULTS:
            expected = ", ".join(f"`{k}`" for k in DEFAULTS)
            raise Err(f"unknown field `{key}`, expected one of {expected}")
    raw = {**DEFAULTS, **given}

    for key in BOOLS:
        if not isinstance(raw[key], bool):
            raise Err(f"{key}: must be true or false")
    max_age = raw["hsts_max_age"]
    if isinstance(max_age, bool) or not isinstance(max_age, int) or not 0 <= max_age <= 10 * ONE_YEAR:
        raise Err(f"hsts_max_age: must be a whole number of seconds between 0 and {10 * ONE_YEAR}")
    if raw["hsts_preload"] and not (raw["hsts_include_subdomains"] and max_age >= ONE_YEAR):
        raise Err(f"hsts_preload: needs hsts_include_subdomains = true and hsts_max_age >= {ONE_YEAR}")

    frame = raw["frame_options"]
    if frame is not False:
        if not isinstance(frame, str) or frame.upper() not in FRAME_OPTIONS:
            raise Err('frame_options: must be "DENY", "SAMEORIGIN" or false')
        raw["frame_options"] = frame.upper()

    referrer = raw["referrer_policy"]
    if referrer is not False:
        if not isinstance(referrer, str):
            raise Err("referrer_policy: must be a policy name or false")
        # A comma list is allowed: browsers use the last one they know.
        for policy in referrer.split(","):
            if policy.strip() not in REFERRER_POLICIES:
                raise Err(f"referrer_policy: unknown policy {policy.strip()!r}, "
                          f"expected one of {', '.join(REFERRER_POLICIES)}")

    csp = raw["content_security_policy"]
    if csp is not None:
        if not isinstance(csp, str) or not csp.strip():
            raise Err("content_security_policy: must be a non-empty string")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in csp):
            raise Err("content_security_policy: must not contain control characters")

    remove = raw["remove_headers"]
    if not isinstance(remove, list) or not all(isinstance(h, str) for h in remove):
        raise Err("remove_headers: must be a list of header names")
    names = []
    for name in remove:
        lower = name.lower()
        if not TOKEN.match(lower):
            raise Err(f"remove_headers: {name!r} is not a header name")
        if lower in HOST_HEADERS:
            raise Err(f"remove_headers: {name!r} frames the message and belongs to the proxy")
        names.append(lower)
    raw["remove_headers"] = names
    return Settings(raw)


# The config never changes during an instance's life: parse it once.
_settings = None


def settings() -> Settings:
    global _settings
    if _settings is None:
        _settings = parse(config.get())
    return _settings


class Guest(exports.Guest):
    def validate_config(self, config: str) -> PluginInfo:
        s = parse(config)
        return PluginInfo(on_request=s.needs_scheme(), on_response=True,
                          request_body=False, response_body=False,
                          request_headers=HeaderInterest_Named([]),
                          response_headers=s.response_headers(),
                          connection=False, properties=s.needs_scheme())

    def on_request(self, req: types.Request) -> types.RequestAction:
        # Called only when HSTS depends on the scheme.
        properties = [(HTTPS, Value_Flag(True))] if req.scheme == "https" else []
        return RequestAction_Continue(RequestChanges(
            method=None, path=None, query=None, headers=[], upstream=None,
            properties=properties, cache=None, body=None,
        ))

    def on_response(self, resp: types.ResponseHead) -> types.ResponseChanges:
        s = settings()
        present = {name.lower() for name, _ in resp.headers}
        wanted = list(s.always)
        if s.hsts is not None and (s.hsts_on_http or https(resp.properties)):
            wanted.append(("strict-transport-security", s.hsts))
        ops = []
        for name, value in wanted:
            if s.override or name not in present:
                ops.append(HeaderOp_Set((name, value)))
        for name in s.remove:
            if name in present:
                ops.append(HeaderOp_Remove(name))
        return ResponseChanges(status=None, headers=ops, body=None)


def https(properties) -> bool:
    """Whether the request phase saw https."""
    return any(name == HTTPS and isinstance(value, Value_Flag) and value.value
               for name, value in properties)
