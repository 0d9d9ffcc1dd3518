"""Lone UTF-16 surrogates in a JSON body: a 400 naming the field, before anything tries to encode them.

JSON lets a string carry "\\ud800" (an escape without its pair), and Python's json module also turns the
CESU-8 bytes ED A0 80 into it. Such a string is not Unicode text: the tokenizer, the chat template and UTF-8
encoding of an error message would all fail on it with a 500. Pydantic accepts it as a `str`, so the gateway
checks the body once, for every route and every field (also ones added later), before validation.

Cheap for normal traffic: only a body whose bytes could hold a surrogate (an escape \\uD800-\\uDFFF or the
byte pair ED A0-BF) is parsed again and walked; a valid pair (an escaped emoji) passes the walk.
"""
from __future__ import annotations

import json
import re

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError

_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def lone_surrogate_path(value, path: tuple = ()) -> tuple | None:
    """The location of the first string (or object key) holding a lone surrogate, None if there is none."""
    if isinstance(value, str):
        return None if _is_text(value) else path
    if isinstance(value, dict):
        for key, item in value.items():
            if not _is_text(key):
                return (*path, key.encode("utf-8", "backslashreplace").decode("ascii"))
            found = lone_surrogate_path(item, (*path, key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = lone_surrogate_path(item, (*path, index))
            if found is not None:
                return found
    return None


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_body(body: bytes) -> None:
    """Raises RequestValidationError (a 400 naming the field) if the JSON body holds a lone surrogate."""
    if not _MAYBE_SURROGATE.search(body):
        return
    try:
        parsed = json.loads(body)
    except ValueError:
        return  # not JSON: the route's own parsing answers that
    path = lone_surrogate_path(parsed)
    if path is not None:
        raise RequestValidationError([{
            "type": "string_unicode", "loc": ("body", *path),
            "msg": "the string holds a lone UTF-16 surrogate (such as \\ud800) and is not valid Unicode text",
            "input": None,
        }])


async def reject_lone_surrogates(request: Request) -> None:
    """An app-wide dependency: runs before the route's body model is validated."""
    if request.method in ("POST", "PUT", "PATCH"):
        check_body(await request.body())


CHECK = Depends(reject_lone_surrogates)  # for FastAPI(dependencies=[...])
