"""Credentials stay in Secrets: a URI with user info (``http://user:password@host``) would end
up in compiled pipelines, logs and MLflow params, so it is refused at the edges and never
logged or recorded."""

from __future__ import annotations

import re

_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@")


def carries_credentials(text: str) -> bool:
    """True for a URI with user info (``scheme://user:password@host``)."""
    return bool(_USERINFO.match(str(text).strip()))


def no_credentials(uri: str, what: str, where: str = "a Kubernetes Secret") -> str:
    """Refuse a URI with user info: it would be written into compiled pipelines, logs and
    MLflow params. The message does not repeat the URI. Returns the URI."""
    if carries_credentials(uri):
        raise ValueError(f"{what}: the URI carries credentials (user:password@); give them "
                         f"through {where} instead")
    return uri
