"""The token endpoint as authlib's stock OAuth 2.0 client sees it (RFC 6749).

A client library is the real judge of "stock OAuth2 clients work" (SPEC, Accounts): it must
get tokens with the password grant, rotate them with the refresh_token grant, and read every
refusal, including a 429, as an RFC 6749 §5.2 error it raises as `OAuthError`, never as a
token and never as a crash while parsing.
"""

import pytest
from authlib.integrations.base_client import OAuthError
from authlib.integrations.requests_client import OAuth2Session


def session_for(server, capture=None):
    """A public client's session (a client id, no secret), pointed at the token endpoint.

    `capture`, a list, receives every token endpoint response, for assertions on status and
    headers that authlib does not expose."""
    # Without a client id authlib sends `client_id=None`; a real public client has one, and the
    # server ignores it (RFC 6749 ignores unrecognised parameters).
    session = OAuth2Session(client_id="orderly-contract-tests", token_endpoint=server.api_url + "/auth/token")
    if capture is not None:
        def keep(response):
            capture.append(response)
            return response
        session.register_compliance_hook("access_token_response", keep)
        session.register_compliance_hook("refresh_token_response", keep)
    return session


def password_grant(session, server, customer):
    return session.fetch_token(
        server.api_url + "/auth/token", grant_type="password", username=customer.email, password=customer.password,
        timeout=30,
    )


def test_password_grant_gives_a_bearer_token_that_authenticates_the_session(server, register):
    customer = register(server)
    session = session_for(server)

    token = password_grant(session, server, customer)

    assert token["token_type"].lower() == "bearer"
    assert token["access_token"] and token["refresh_token"]
    assert token["expires_in"] > 0
    assert not token.is_expired()
    me = session.get(server.api_url + "/users/me", timeout=30)
    assert me.status_code == 200, me.text
    assert me.json()["email"] == customer.email
    assert me.json()["role"] == "customer"


def test_refresh_token_grant_rotates_both_tokens(server, register):
    customer = register(server)
    session = session_for(server)
    first = dict(password_grant(session, server, customer))

    second = session.refresh_token(server.api_url + "/auth/token", timeout=30)

    assert second["refresh_token"] != first["refresh_token"], "refresh tokens rotate on every use"
    assert session.token["access_token"] == second["access_token"], "the session uses the new token"
    me = session.get(server.api_url + "/users/me", timeout=30)
    assert me.status_code == 200, me.text
    assert me.json()["email"] == customer.email


def test_replaying_a_rotated_refresh_token_is_invalid_grant_and_revokes_the_family(server, register):
    customer = register(server)
    session = session_for(server)
    rotated = password_grant(session, server, customer)["refresh_token"]
    newest = session.refresh_token(server.api_url + "/auth/token", refresh_token=rotated, timeout=30)["refresh_token"]

    with pytest.raises(OAuthError) as replay:
        session.refresh_token(server.api_url + "/auth/token", refresh_token=rotated, timeout=30)
    assert replay.value.error == "invalid_grant"

    # SPEC, Accounts: "replaying a rotated one revokes its whole family".
    with pytest.raises(OAuthError) as after:
        session.refresh_token(server.api_url + "/auth/token", refresh_token=newest, timeout=30)
    assert after.value.error == "invalid_grant"

    # The account itself is not locked: a new login starts a new family.
    assert password_grant(session_for(server), server, customer)["access_token"]


def test_wrong_password_is_an_invalid_grant_oauth_error(server, register):
    customer = register(server)
    responses = []
    session = session_for(server, capture=responses)

    with pytest.raises(OAuthError) as refused:
        session.fetch_token(
            server.api_url + "/auth/token", grant_type="password", username=customer.email,
            password=customer.password + "-wrong", timeout=30,
        )

    assert refused.value.error == "invalid_grant"
    assert refused.value.description, "error_description says why"
    assert responses[-1].status_code == 400
    assert not session.token, "no token is kept from a refusal"


@pytest.mark.parametrize(
    "policy",
    [
        # Every call to /api/v1/auth/* from one address (registration included).
        {"ORDERLY_RATE_LIMIT_CREDENTIALS": "3/60s"},
        # Password attempts on one account, from anywhere.
        {"ORDERLY_RATE_LIMIT_ACCOUNT_LOGIN": "2/600s"},
    ],
    ids=["credentials-per-ip", "login-per-account"],
)
def test_rate_limited_token_request_is_a_temporarily_unavailable_oauth_error(start_server, register, policy):
    with start_server(settings=policy) as server:
        customer = register(server)
        responses = []
        session = session_for(server, capture=responses)
        tokens, refusal = [], None
        for _ in range(6):  # far past either quota
            try:
                tokens.append(password_grant(session, server, customer))
            except OAuthError as error:
                refusal = error
                break

        assert tokens, "the first password grant is within the quota"
        assert refusal is not None, f"no refusal after {len(tokens)} grants over a quota of {policy}"
        assert refusal.error == "temporarily_unavailable"
        limited = responses[-1]
        assert limited.status_code == 429
        assert int(limited.headers["Retry-After"]) > 0
        assert "access_token" not in limited.json()
        assert session.token["access_token"] == tokens[-1]["access_token"], "the refusal did not replace the token"
