"""Offline checks of a MongoDB URI, so that ``check-config`` refuses one ``run`` cannot use."""

from __future__ import annotations

from pymongo.uri_parser import parse_uri

from changestream_worker.logs import mask_uri

_URI_SCHEMES = ("mongodb://", "mongodb+srv://", "embedded://")


def uri_problem(uri: str) -> str | None:
    """Why ``uri`` cannot be a MongoDB URI the worker connects to (``None``: it can).

    Parsed offline: a ``mongodb+srv://`` URI is checked as to its form, never resolved.
    """
    if not uri.startswith(_URI_SCHEMES):
        scheme = uri.split("://", 1)[0] + "://" if "://" in uri else "no scheme"
        return f"expected a mongodb://, mongodb+srv:// or embedded:// URI, got {scheme}"
    if uri.startswith("embedded://"):
        return None
    srv = uri.startswith("mongodb+srv://")
    plain = "mongodb://" + uri.removeprefix("mongodb+srv://") if srv else uri
    try:
        parsed = parse_uri(plain, warn=False)
    except Exception as exc:  # pymongo raises ValueError, InvalidURI or ConfigurationError
        reason = mask_uri(str(exc)).removesuffix(" Refer to docstring.")
        return f"not a valid MongoDB URI: {reason}"
    hosts = plain.removeprefix("mongodb://").split("/")[0].split("?")[0].rsplit("@", 1)[-1]
    if srv and (len(parsed["nodelist"]) != 1 or ":" in hosts):
        return "a mongodb+srv:// URI names exactly one host name, without a port"
    return None
