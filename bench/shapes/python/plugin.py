"""The Python guest of the contract-shape bench (componentize-py): reads two
of the request's headers and its path, in each shape, and answers two header
sets. Same behaviour as ../rust and ../js."""

from typing import List, Optional

from wit_world import exports
from wit_world.imports import lazy
from wit_world.imports.types import Changes, Request


def answer(key: Optional[str], ua: Optional[str], path: str) -> Changes:
    return Changes(set_headers=[
        ("x-client", "anonymous" if key is None else key),
        ("x-ua-bytes", str((0 if ua is None else len(ua)) + len(path))),
    ])


class Guest(exports.Guest):
    def interest(self) -> List[str]:
        return ["x-api-key", "user-agent"]

    def on_request(self, req: Request) -> Changes:
        key = None
        ua = None
        for name, value in req.headers:
            if name == "x-api-key":
                if key is None:
                    key = value
            elif name == "user-agent":
                if ua is None:
                    ua = value
            else:
                continue
            if key is not None and ua is not None:
                break
        return answer(key, ua, req.path)

    def on_request_lazy(self, req: lazy.Request) -> Changes:
        return answer(req.header("x-api-key"), req.header("user-agent"), req.path())
