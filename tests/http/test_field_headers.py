"""Any field as a header (``GATEWAY_FIELD_HEADERS``), through granian, for a real Better Auth session.

Better Auth (the test peer) declares an additional user field; a user signs up with it. The
gateway sends that field, a session field and a null field as the configured headers of its 200,
on a miss and on a hit alike, whatever the client sent under those names.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tests.support.better_auth import PASSWORD, BetterAuth

if TYPE_CHECKING:
    from pathlib import Path

    import httpx

# The user writes their own field: a line break (a header of their own) and a non-Latin-1 character.
TENANT = "acme\r\nx-admin: 1 \u2603"
FIELD_HEADERS = "user.tenantId=X-Tenant-Id,session.userAgent=x-client-agent,user.image=x-user-image"


async def test_a_field_of_a_real_session_is_sent_as_its_header_and_clobbers_a_forged_one(
    node_modules: Path, database: str, start_gateway: Any, ba_client: httpx.AsyncClient
) -> None:
    """``user.tenantId`` (an additionalField), ``session.userAgent`` and a null ``user.image``, each as its header."""
    options = {"user": {"additionalFields": {"tenantId": {"type": "string", "required": False}}}}
    peer = BetterAuth(database, env={"PLUGINS": "", "OPTIONS": json.dumps(options)})
    try:
        signed_up = await ba_client.post(
            peer.url + "/api/auth/sign-up/email",
            json={"email": "t@example.com", "password": PASSWORD, "name": "T", "tenantId": TENANT},
            headers={"origin": peer.origin, "user-agent": "agent/1.0 (tests)"},
        )
        assert signed_up.status_code == 200, signed_up.text
        cookie = {"cookie": signed_up.headers["set-cookie"].split(";", 1)[0]}
        theirs = (await ba_client.get(peer.url + "/api/auth/get-session", headers=cookie)).json()
    finally:
        peer.stop()
    assert theirs["user"]["tenantId"] == TENANT
    assert theirs["user"]["image"] is None
    env = {
        "DATABASE_URL": database,
        "GATEWAY_USER_ADDITIONAL_FIELDS": "tenantId",
        "GATEWAY_FIELD_HEADERS": FIELD_HEADERS,
    }
    server = start_gateway(env)
    forged = {"x-tenant-id": "evil", "x-user-image": "https://evil.example/", "x-client-agent": "forged"}
    for _ in range(3):  # a miss, then hits (the headers rendered once on the cache entry)
        answer = await ba_client.get(server.url + "/validate", headers=cookie | forged)
        assert answer.status_code == 200
        assert answer.headers["x-tenant-id"] == "acme%0D%0Ax-admin: 1 %E2%98%83"  # header_value's escaping
        assert "x-admin" not in answer.headers
        assert answer.headers["x-client-agent"] == theirs["session"]["userAgent"] == "agent/1.0 (tests)"
        assert answer.headers["x-user-image"] == ""  # always sent: a proxy copying it clobbers the forged one
        assert answer.headers["x-auth-request-email"] == "t@example.com"
    refused = await ba_client.get(server.url + "/validate", headers=forged)
    assert refused.status_code == 401
    assert "x-tenant-id" not in refused.headers
