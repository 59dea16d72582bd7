"""Schemathesis hooks for the contract run (loaded through SCHEMATHESIS_HOOKS by run.py).

An `Idempotency-Key` means "this is the same request": reusing one with another body is
refused (422 `idempotency_key_reused`), which the document states. Generated cases reuse the
same few keys ("0", "00", ...) across unrelated requests, so each well-formed key gets a
suffix that makes it unique to its call; malformed keys are left as generated, so the server's
refusal of them is still tested.

A webhook URL is resolved when registered and connected to when events happen: every generated
URL with a scheme is replaced by a closed port on 127.0.0.1 (which the run's allow-list lets
through), so the run looks up no name and sends nothing beyond this machine.
"""

import itertools
import re

import schemathesis

WELL_FORMED = re.compile(r"^[\x20-\x7e]{1,200}$")
CALLS = itertools.count()
LOCAL_TARGET = "http://127.0.0.1:9/contract"


@schemathesis.hook
def before_call(context, case, kwargs):
    headers = case.headers or {}
    for name in list(headers):
        if name.lower() == "idempotency-key" and isinstance(headers[name], str) and WELL_FORMED.match(headers[name]):
            headers[name] = f"{headers[name]}~{next(CALLS)}"
    body = case.body
    if "/webhooks" in case.path and isinstance(body, dict) and isinstance(body.get("url"), str) and "://" in body["url"]:
        body["url"] = LOCAL_TARGET
