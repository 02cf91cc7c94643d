"""Signed webhooks (Standard Webhooks v1): what `deliver()` sends verifies, and a
webhook that was tampered with, replayed, or signed with another secret does not.

Deliveries are real POSTs to a receiver on loopback; the README's receiver
examples are read out of README.md and run against them."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from batchsvc.access import Role
from batchsvc.outbound import webhooks
from batchsvc.outbound.netguard import Allowlist
from batchsvc.outbound.webhooks import WebhookError, WebhookVerificationError, sign, signature_header, verify
from batchsvc.services import Services
from batchsvc.settings import PROJECT_ROOT, load_settings
from batchsvc.store.tenants import TenantPolicy, webhook_secrets
from tests.conftest import TEST_WEBHOOK_SECRET
from tests.support.http import LoopbackHTTPServer, Received

NEW = webhooks.new_secret()
OLD = webhooks.new_secret()
OTHER = webhooks.new_secret()
JOB_ID = "batch_0123456789abcdef"
MSG_ID = webhooks.delivery_id(JOB_ID, "completed")
LOOPBACK = Allowlist.parse("127.0.0.1")  # the SSRF guard admits the test receiver only when told to


@pytest.fixture(scope="module")
def loopback(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackHTTPServer]:
    # One server for the module: stopping one takes half a second.
    server = LoopbackHTTPServer(tmp_path_factory.mktemp("served")).start()
    yield server
    server.stop()


@pytest.fixture
def receiver(loopback: LoopbackHTTPServer) -> LoopbackHTTPServer:
    loopback.received.clear()
    loopback.post_status = 200
    return loopback


def deliver(receiver: LoopbackHTTPServer, secrets: Sequence[str]) -> Received:
    """One real delivery of a finished job's webhook; returns what the receiver got."""
    body = webhooks.payload(JOB_ID, "completed", {"total": 2, "failed": 0}, "https://files.example/r.jsonl")
    webhooks.deliver(f"{receiver.url}/hooks/batch", body, MSG_ID, timeout=5, secrets=secrets, allow=LOOPBACK)
    return receiver.posts()[-1]


def sent_at(post: Received) -> int:
    return int(post.headers["webhook-timestamp"])


def signed_headers(secret: str, body: bytes, timestamp: int, msg_id: str = MSG_ID) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


# --- what deliver() sends ---


def test_a_delivered_webhook_verifies(receiver: LoopbackHTTPServer) -> None:
    before = int(time.time())
    post = deliver(receiver, [NEW])
    assert before <= sent_at(post) <= time.time()
    assert post.headers["webhook-id"] == MSG_ID
    # The signed timestamp is the very one in the header.
    assert post.headers["webhook-signature"] == sign(NEW, MSG_ID, sent_at(post), post.body)
    verify(NEW, post.headers, post.body)


def test_a_tampered_body_fails(receiver: LoopbackHTTPServer) -> None:
    post = deliver(receiver, [NEW])
    tampered = post.body.replace(b'"completed"', b'"failed"')
    assert tampered != post.body
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify(NEW, post.headers, tampered)


@pytest.mark.parametrize(("header", "value"), [("webhook-id", "msg_other"), ("webhook-timestamp", "+1")])
def test_the_id_and_timestamp_are_signed_too(receiver: LoopbackHTTPServer, header: str, value: str) -> None:
    post = deliver(receiver, [NEW])
    headers = dict(post.headers)
    headers[header] = str(sent_at(post) + 1) if value == "+1" else value
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify(NEW, headers, post.body)


def test_a_replay_outside_the_tolerance_fails(receiver: LoopbackHTTPServer) -> None:
    post = deliver(receiver, [NEW])
    sent = sent_at(post)
    for now in (sent - 300, sent + 300):  # 5 minutes either way is still fine
        verify(NEW, post.headers, post.body, now=now)
    for now in (sent + 301, sent - 301):  # replayed later; or stamped ahead of the receiver's clock
        with pytest.raises(WebhookVerificationError, match="too far from now"):
            verify(NEW, post.headers, post.body, now=now)
    with pytest.raises(WebhookVerificationError, match="too far from now"):
        verify(NEW, post.headers, post.body, now=sent + 31, tolerance_s=30)


@pytest.mark.parametrize("offset", [-3600, -301, 301, 3600])
def test_a_correctly_signed_old_or_future_timestamp_fails(offset: int) -> None:
    body = b'{"job_id": "x"}'
    headers = signed_headers(NEW, body, int(time.time()) + offset)
    with pytest.raises(WebhookVerificationError, match="too far from now"):
        verify(NEW, headers, body)


def test_a_wrong_secret_fails(receiver: LoopbackHTTPServer) -> None:
    post = deliver(receiver, [NEW])
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify(OTHER, post.headers, post.body)
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify([OTHER, OLD], post.headers, post.body)


def test_during_rotation_either_secret_verifies(receiver: LoopbackHTTPServer) -> None:
    post = deliver(receiver, [NEW, OLD])
    sent = sent_at(post)
    assert post.headers["webhook-signature"].split(" ") == [
        sign(NEW, MSG_ID, sent, post.body),
        sign(OLD, MSG_ID, sent, post.body),
    ]
    verify(NEW, post.headers, post.body)  # a receiver already moved to the new secret
    verify(OLD, post.headers, post.body)  # a receiver still on the old one
    verify([OTHER, OLD], post.headers, post.body)
    with pytest.raises(WebhookVerificationError):
        verify(OTHER, post.headers, post.body)


class SteppingClock:
    """Stands in for the `time` module inside batchsvc.outbound.webhooks: `time()` returns the given values in turn."""

    def __init__(self, *stamps: float) -> None:
        self._stamps = iter(stamps)

    def time(self) -> float:
        return next(self._stamps)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def test_a_retry_keeps_the_id_and_is_signed_with_a_fresh_timestamp(
    receiver: LoopbackHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    first_try = int(time.time())
    monkeypatch.setattr(webhooks, "time", SteppingClock(first_try, first_try + 4))
    receiver.post_status = 503
    with pytest.raises(WebhookError):
        deliver(receiver, [NEW])
    receiver.post_status = 200
    deliver(receiver, [NEW])

    first, second = receiver.posts()
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == MSG_ID
    assert (sent_at(first), sent_at(second)) == (first_try, first_try + 4)
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]
    for post in (first, second):
        verify(NEW, post.headers, post.body, now=sent_at(post))


@pytest.fixture
def fresh_warning() -> Iterator[None]:
    webhooks._warn_unsigned.cache_clear()
    yield
    webhooks._warn_unsigned.cache_clear()


@pytest.mark.usefixtures("fresh_warning")
def test_without_secrets_webhooks_go_unsigned_with_one_warning(
    receiver: LoopbackHTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="batchsvc.outbound.webhooks")
    posts = [deliver(receiver, []), deliver(receiver, ())]
    for post in posts:
        assert "webhook-signature" not in {name.lower() for name in post.headers}
        assert post.headers["webhook-id"] == MSG_ID
        with pytest.raises(WebhookVerificationError, match="missing header webhook-signature"):
            verify(NEW, post.headers, post.body)
    assert [r.getMessage() for r in caplog.records].count(
        "webhook_secrets is empty: webhooks go out unsigned and receivers cannot verify them"
    ) == 1


def test_the_setting_lists_secrets_newest_first() -> None:
    # A tenant without secrets of its own is signed with `settings.webhook_secrets.split()`.
    assert load_settings(environ={}).webhook_secrets.split() == []
    settings = load_settings(environ={"BATCHSVC_WEBHOOK_SECRETS": f" {NEW}  {OLD} "})
    assert settings.webhook_secrets.split() == [NEW, OLD]
    assert webhook_secrets(TenantPolicy("default"), settings) == [NEW, OLD]


# --- per-tenant secrets and their rotation ---


def test_a_tenant_secret_replaces_the_deployment_default_for_that_tenant_only(services: Services) -> None:
    settings = dataclasses.replace(services.settings, webhook_secrets=OLD)
    secret, _ = services.tenants.rotate_webhook_secret("acme", overlap_s=3600)
    assert secret.startswith("whsec_") and secret not in (NEW, OLD)
    assert webhook_secrets(services.tenants.get("acme"), settings) == [secret]
    assert webhook_secrets(services.tenants.get("globex"), settings) == [OLD]


def test_during_a_rotation_both_secrets_sign_until_the_overlap_ends(
    services: Services, receiver: LoopbackHTTPServer
) -> None:
    first, _ = services.tenants.rotate_webhook_secret("acme", overlap_s=3600, secret=OLD)
    second, until = services.tenants.rotate_webhook_secret("acme", overlap_s=3600, secret=NEW)
    assert (first, second) == (OLD, NEW)
    policy = services.tenants.get("acme")
    assert policy.live_secrets() == [NEW, OLD]

    post = deliver(receiver, webhook_secrets(policy, services.settings))
    verify(OLD, post.headers, post.body)  # a receiver not yet switched over
    verify(NEW, post.headers, post.body)  # one already switched

    # Past the overlap, only the new one signs.
    assert policy.live_secrets(now=until + 1) == [NEW]
    later = deliver(receiver, policy.live_secrets(now=until + 1))
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify(OLD, later.headers, later.body)
    # The secrets never show in what the API returns of the tenant.
    shown = repr(policy.public(services.settings))
    assert NEW not in shown and OLD not in shown


def test_an_overlap_never_outlives_the_newest_rotation(services: Services) -> None:
    services.tenants.rotate_webhook_secret("acme", overlap_s=3600, secret=OLD)
    services.tenants.rotate_webhook_secret("acme", overlap_s=3600, secret=NEW)
    _, until = services.tenants.rotate_webhook_secret("acme", overlap_s=60, secret=OTHER)
    policy = services.tenants.get("acme")
    assert policy.live_secrets() == [OTHER, NEW, OLD]
    assert policy.live_secrets(now=until + 1) == [OTHER]  # an overlap never outlives the newest rotation


def test_an_admin_rotates_a_tenant_secret_through_the_api(make_app: Any) -> None:
    app = make_app(role=Role.ADMIN)
    client = app.test_client()
    made = client.post("/v1/tenants/acme/webhook_secret")
    assert made.status_code == 201
    body = made.get_json()
    assert body["secret"].startswith("whsec_") and body["previous_valid_until"] > time.time()
    # Its first rotation: the deployment secret it was signed with so far keeps signing for the overlap.
    policy = app.extensions["batchsvc"].tenants.get("acme")
    assert policy.live_secrets() == [body["secret"], TEST_WEBHOOK_SECRET]
    assert policy.live_secrets(now=body["previous_valid_until"] + 1) == [body["secret"]]
    shown = client.get("/v1/tenants/acme").get_json()
    assert body["secret"] not in repr(shown) and TEST_WEBHOOK_SECRET not in repr(shown)
    assert len(shown["webhook_secrets"]) == 2
    refused = client.post("/v1/tenants/acme/webhook_secret", json={"secret": "whsec_not-base64!!"})
    assert refused.status_code == 422
    assert "not-base64" not in refused.get_data(as_text=True)


# --- the signature itself, against the spec ---


def test_sign_matches_the_spec_computed_independently() -> None:
    key = bytes(range(32))
    secret = "whsec_" + base64.b64encode(key).decode()
    msg_id, timestamp = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", 1674087231
    body = b'{"job_id":"batch_1","status":"completed"}'
    # The spec: HMAC-SHA256 over "{msg_id}.{timestamp}.{payload}", keyed by the base64-decoded
    # part after "whsec_", sent as "v1," + base64(digest).
    signed_content = b"msg_2KWPBgLlAfxdpx2AI54pPJ85f4W.1674087231." + body
    expected = "v1," + base64.b64encode(hmac.new(key, signed_content, hashlib.sha256).digest()).decode()

    assert sign(secret, msg_id, timestamp, body) == expected
    assert signature_header([secret], msg_id, timestamp, body) == expected
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": expected}
    verify(secret, headers, body, now=timestamp)


def test_sign_matches_the_reference_library_vector() -> None:
    # Published in the Standard Webhooks Python library's tests (test_sign_function).
    secret, msg_id, timestamp = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(secret, msg_id, timestamp, body) == expected
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": expected}
    verify(secret, headers, body, now=timestamp + 60)
    verify(secret.removeprefix("whsec_"), headers, body, now=timestamp)  # the bare base64 works too


# --- what verify() refuses, and how it reads headers ---


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_fails(missing: str) -> None:
    body = b"{}"
    headers = signed_headers(NEW, body, int(time.time()))
    del headers[missing]
    with pytest.raises(WebhookVerificationError, match=f"missing header {missing}"):
        verify(NEW, headers, body)
    headers[missing] = ""
    with pytest.raises(WebhookVerificationError, match=f"missing header {missing}"):
        verify(NEW, headers, body)


@pytest.mark.parametrize("stamp", ["soon", "1.7e9", "-5", " 1674087231", "9" * 5000])
def test_a_timestamp_that_is_not_unix_seconds_fails(stamp: str) -> None:
    body = b"{}"
    headers = {**signed_headers(NEW, body, int(time.time())), "webhook-timestamp": stamp}
    with pytest.raises(WebhookVerificationError, match="not an integer"):
        verify(NEW, headers, body)


def test_header_names_are_case_insensitive() -> None:
    body = b"{}"
    headers = {name.title(): value for name, value in signed_headers(NEW, body, int(time.time())).items()}
    assert "Webhook-Signature" in headers
    verify(NEW, headers, body)


def test_only_v1_entries_can_match() -> None:
    body = b"{}"
    headers = signed_headers(NEW, body, int(time.time()))
    valid = headers["webhook-signature"]
    digest = valid.removeprefix("v1,")
    verify(NEW, {**headers, "webhook-signature": f"v1a,{digest} v2,{digest} v1,AAAA {valid}"}, body)
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify(NEW, {**headers, "webhook-signature": f"v1a,{digest} v2,{digest} {digest}"}, body)


def test_an_id_with_a_dot_is_refused() -> None:
    body = b"{}"
    with pytest.raises(ValueError, match="may not contain"):
        sign(NEW, "msg.1", 1, body)
    headers = {**signed_headers(NEW, body, int(time.time())), "webhook-id": "msg.1"}
    with pytest.raises(WebhookVerificationError, match="may not contain"):
        verify(NEW, headers, body)


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("whsec_not base64!", "followed by base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "at least 24 bytes"),
    ],
)
def test_a_malformed_secret_is_refused_without_echoing_it(secret: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        sign(secret, MSG_ID, 1, b"{}")
    assert secret.removeprefix("whsec_") not in str(caught.value)


def test_no_secrets_is_a_usage_error() -> None:
    with pytest.raises(ValueError, match="no webhook secret"):
        signature_header([], MSG_ID, 1, b"{}")
    with pytest.raises(ValueError, match="no webhook secret"):
        verify([], signed_headers(NEW, b"{}", int(time.time())), b"{}")


def test_new_secrets_are_whsec_and_distinct() -> None:
    secret = webhooks.new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert secret != webhooks.new_secret()


# --- the README's receiver examples, exactly as written there ---


def readme_examples() -> list[str]:
    text = (PROJECT_ROOT / "README.md").read_text()
    section = re.split(r"^#{2,3} ", text.split("\n### Verifying webhooks\n", 1)[1], maxsplit=1, flags=re.M)[0]
    blocks = re.findall(r"^```python\n(.*?)^```$", section, flags=re.S | re.M)
    assert len(blocks) == 2, "README's 'Verifying webhooks' should hold the Flask and the stdlib example"
    return blocks


def test_the_readme_flask_receiver_accepts_only_signed_webhooks(
    receiver: LoopbackHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOK_SECRETS", OLD)  # a receiver still on the old secret, mid-rotation
    namespace: dict[str, Any] = {"__name__": "readme_receiver"}
    exec(readme_examples()[0], namespace)
    client = namespace["app"].test_client()

    post = deliver(receiver, [NEW, OLD])
    headers = {k: v for k, v in post.headers.items() if k.lower().startswith("webhook-") or k.lower() == "content-type"}
    assert client.post("/hooks/batch", data=post.body, headers=headers).status_code == 204
    tampered = post.body.replace(b'"completed"', b'"failed"')
    assert client.post("/hooks/batch", data=tampered, headers=headers).status_code == 401
    unsigned = {k: v for k, v in headers.items() if k.lower() != "webhook-signature"}
    assert client.post("/hooks/batch", data=post.body, headers=unsigned).status_code == 401


def test_the_readme_stdlib_snippet_agrees_with_verify(receiver: LoopbackHTTPServer) -> None:
    namespace: dict[str, Any] = {}
    exec(readme_examples()[1], namespace)
    verify_webhook = namespace["verify_webhook"]

    post = deliver(receiver, [NEW, OLD])
    assert verify_webhook([NEW], post.headers, post.body)
    assert verify_webhook([OLD], post.headers, post.body)
    assert not verify_webhook([OTHER], post.headers, post.body)
    assert not verify_webhook([NEW], post.headers, post.body.replace(b'"completed"', b'"failed"'))
    for offset in (-301, 301):
        stale = signed_headers(NEW, post.body, int(time.time()) + offset)
        assert not verify_webhook([NEW], stale, post.body)
        with pytest.raises(WebhookVerificationError):
            verify(NEW, stale, post.body)
    for missing in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        assert not verify_webhook([NEW], {k: v for k, v in post.headers.items() if k != missing}, post.body)
