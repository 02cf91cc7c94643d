"""SSRF guard: every refusal names its rule, and no refused request opens a connection.

Two witnesses watch for connections: a real listener on 127.0.0.1 that counts what it
accepts (every loopback spelling below points at its port), and a spy on
socket.connect that records every outbound connect attempt of the test, wherever to.
The resolver is stubbed only where a test needs a name to resolve somewhere chosen."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchsvc.outbound import netguard
from batchsvc.outbound.fetch import FetchError, fetch_to_storage
from batchsvc.outbound.netguard import Allowlist, BlockedURL, OutboundError, ResponseTooLarge
from batchsvc.outbound.webhooks import WebhookBlocked, WebhookError, deliver
from batchsvc.storage.local import LocalStorage

LOOPBACK = Allowlist.parse("127.0.0.1")
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


class Listener:
    """A TCP server on 127.0.0.1: counts connections, records each request, answers with `reply`.

    `stall_after_reply` keeps the connection open after replying, until the test ends."""

    def __init__(self, reply: bytes = OK, *, tls: ssl.SSLContext | None = None, stall_after_reply: bool = False):
        self.reply = reply
        self.tls = tls
        self.stall_after_reply = stall_after_reply
        self.accepted = 0
        self.requests: list[bytes] = []
        self.server_names: list[str | None] = []
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            # OSError: the client hung up (byte cap, timeout), as some tests mean it to.
            with conn, contextlib.suppress(OSError):
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        if self.tls is not None:
            with self.tls.wrap_socket(conn, server_side=True) as wrapped:
                self._exchange(wrapped)
        else:
            self._exchange(conn)

    def _exchange(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        while len(body) < length:
            body += conn.recv(65536)
        self.requests.append(head + b"\r\n\r\n" + body)
        if self.reply:
            conn.sendall(self.reply)
        if self.stall_after_reply or not self.reply:
            self._stop.wait(10)

    def header(self, index: int, name: str) -> str | None:
        for line in self.requests[index].split(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
            key, _, value = line.decode().partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(5)


@pytest.fixture
def make_listener() -> Iterator[Callable[..., Listener]]:
    listeners: list[Listener] = []

    def make(*args: Any, **kwargs: Any) -> Listener:
        listeners.append(Listener(*args, **kwargs))
        return listeners[-1]

    yield make
    for listener in listeners:
        listener.close()


@pytest.fixture
def listener(make_listener: Callable[..., Listener]) -> Listener:
    return make_listener()


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every address this test's code tried to connect a socket to."""
    seen: list[Any] = []
    real_connect = socket.socket.connect

    def spy(self: socket.socket, address: Any) -> None:
        seen.append(address[:2] if isinstance(address, tuple) else address)
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", spy)
    return seen


class Resolver:
    """A stand-in for the guard's getaddrinfo: `answers[name]` holds one answer per lookup (the
    last repeats); `calls` lists the names looked up."""

    def __init__(self) -> None:
        self.answers: dict[str, list[list[str]]] = {}
        self.calls: list[str] = []

    def __call__(self, host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        self.calls.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        queue = self.answers[host]
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses
        ]


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Resolver:
    """Only netguard's name is replaced: were urllib3 to look a name up itself, it would use
    the real resolver and fail on these made-up names."""
    stub = Resolver()
    monkeypatch.setattr(netguard, "getaddrinfo", stub)
    return stub


def get(url: str, **kwargs: Any) -> bytes:
    kwargs.setdefault("timeout", 5)
    with netguard.request("GET", url, **kwargs) as response:
        return b"".join(netguard.iter_body(response, max_bytes=1 << 20))


# --- refusals, with no connection made --------------------------------------------------------

REFUSED_HOSTS = [
    ("127.0.0.1", "is a loopback address"),
    ("localhost", "resolves to a loopback address"),
    ("[::1]", "is a loopback address"),
    ("10.0.0.1", "is a private address"),
    ("169.254.169.254", "is a cloud metadata address"),
    ("[::ffff:169.254.169.254]", "is a cloud metadata address (embedded IPv4)"),
    ("[64:ff9b::a9fe:a9fe]", "is a cloud metadata address (embedded IPv4)"),
    ("2852039166", "is a cloud metadata address"),  # decimal 169.254.169.254
    ("0177.0.0.1", "is a loopback address"),  # octal
    ("0.0.0.0", "is an unspecified address"),  # Linux delivers it to loopback
    # more spellings of loopback, all aimed at the listener's port
    ("0x7f.1", "is a loopback address"),
    ("127.1", "is a loopback address"),
    ("2130706433", "is a loopback address"),
    ("0x7f000001", "is a loopback address"),
    ("[::ffff:127.0.0.1]", "is a loopback address (embedded IPv4)"),
    ("[::ffff:7f00:1]", "is a loopback address (embedded IPv4)"),
    ("[64:ff9b::7f00:1]", "is a loopback address (embedded IPv4)"),
    ("[2002:7f00:1::1]", "is a loopback address (embedded IPv4)"),  # 6to4
    ("[::]", "is an unspecified address"),
    ("0", "is an unspecified address"),
    # the rest of the non-public space
    ("192.168.1.10", "is a private address"),
    ("172.16.5.4", "is a private address"),
    ("[fc00::1]", "is a private address"),
    ("[fd00:ec2::254]", "is a cloud metadata address"),
    ("169.254.1.1", "is a link-local address"),
    ("[fe80::1]", "is a link-local address"),
    ("100.64.0.1", "is a shared (CGNAT) address"),
    ("224.0.0.1", "is a multicast address"),
    ("[ff02::1]", "is a multicast address"),
    ("240.0.0.1", "is a reserved address"),
    ("198.18.0.1", "is a private address"),  # benchmarking: not global either
    ("[::127.0.0.1]", "is a reserved address"),  # deprecated IPv4-compatible form
    ("255.255.255.255", "is a broadcast address"),
]


@pytest.mark.parametrize(("host", "rule"), REFUSED_HOSTS, ids=[h for h, _ in REFUSED_HOSTS])
def test_non_public_hosts_are_refused_before_any_connection(
    host: str, rule: str, listener: Listener, connects: list[Any]
) -> None:
    url = f"http://{host}:{listener.port}/in.jsonl"
    with pytest.raises(BlockedURL) as refused:
        get(url)
    assert str(refused.value) == f"host {host.strip('[]')} {rule}"
    assert connects == []
    assert listener.accepted == 0


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://127.0.0.1:{port}/_x", "ftp://127.0.0.1:{port}/in"])
def test_other_schemes_are_refused(url: str, listener: Listener, connects: list[Any]) -> None:
    with pytest.raises(BlockedURL, match="scheme not allowed"):
        get(url.format(port=listener.port), allow=LOOPBACK)
    assert connects == [] and listener.accepted == 0


@pytest.mark.parametrize("userinfo", ["user@", "user:secret@", ":@"])
def test_credentials_in_the_url_are_refused(userinfo: str, listener: Listener, connects: list[Any]) -> None:
    with pytest.raises(BlockedURL, match="credentials in the URL are not allowed"):
        get(f"http://{userinfo}127.0.0.1:{listener.port}/", allow=LOOPBACK)
    assert connects == [] and listener.accepted == 0


@pytest.mark.parametrize("url", ["http:///nohost", "http://a..b/", "http://8.8.8.8 x/", "http://x:99999/"])
def test_malformed_urls_are_refused(url: str, connects: list[Any]) -> None:
    with pytest.raises(BlockedURL):
        netguard.vet(url)
    assert connects == []


def test_a_name_resolving_to_a_private_address_is_refused_without_echoing_it(
    resolver: Resolver, connects: list[Any]
) -> None:
    resolver.answers["evil.example"] = [["10.1.2.3"]]
    with pytest.raises(BlockedURL) as refused:
        get("http://evil.example/in.jsonl")
    assert str(refused.value) == "host evil.example resolves to a private address"
    assert "10.1.2.3" not in str(refused.value)
    assert connects == []


def test_one_private_address_among_public_ones_is_enough_to_refuse(resolver: Resolver) -> None:
    resolver.answers["mixed.example"] = [["93.184.215.14", "2606:4700::1111", "169.254.169.254"]]
    with pytest.raises(BlockedURL, match="resolves to a cloud metadata address"):
        netguard.vet("https://mixed.example/")


def test_a_name_that_does_not_resolve_is_a_failure_not_a_refusal(resolver: Resolver) -> None:
    with pytest.raises(OutboundError, match=r"^host nowhere\.example could not be resolved$") as failed:
        netguard.vet("http://nowhere.example/")
    assert not isinstance(failed.value, BlockedURL)


def test_a_redirect_is_not_followed(make_listener: Callable[..., Listener], connects: list[Any]) -> None:
    redirect = b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/latest/meta-data/\r\nContent-Length: 0\r\n\r\n"
    listener = make_listener(redirect)
    with pytest.raises(BlockedURL, match="redirects are not followed"):
        get(f"http://127.0.0.1:{listener.port}/in.jsonl", allow=LOOPBACK)
    # The loopback receiver was asked once; the metadata address never.
    assert listener.accepted == 1
    assert connects == [("127.0.0.1", listener.port)]


# --- the literal forms: read as the C library reads them, by us and by the resolver -----------

LEGACY_FORMS = {
    "2852039166": "169.254.169.254",
    "0177.0.0.1": "127.0.0.1",
    "0x7f.1": "127.0.0.1",
    "127.1": "127.0.0.1",
    "0x7f000001": "127.0.0.1",
    "017700000001": "127.0.0.1",
    "0": "0.0.0.0",
    "::ffff:169.254.169.254": "::ffff:a9fe:a9fe",
    "64:ff9b::a9fe:a9fe": "64:ff9b::a9fe:a9fe",
}


@pytest.mark.parametrize(("literal", "address"), LEGACY_FORMS.items())
def test_literals_are_read_alike_by_inet_aton_and_getaddrinfo(literal: str, address: str) -> None:
    expected = ipaddress.ip_address(address)
    assert netguard.parse_literal(literal) == expected
    assert netguard.resolve(literal, 80) == [expected]  # the real resolver: numeric, no DNS asked


@pytest.mark.parametrize("literal", LEGACY_FORMS)
def test_literals_are_refused_on_the_resolver_path_too(literal: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Were the literal parse to miss a form, getaddrinfo would read it, and its answer is checked.
    monkeypatch.setattr(netguard, "parse_literal", lambda host: None)
    with pytest.raises(BlockedURL, match=r"^host \S+ resolves to an? [\w() -]*address"):
        netguard.vet(f"http://{literal if ':' not in literal else f'[{literal}]'}/")


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.215.14", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert netguard.refusal(ipaddress.ip_address(address)) is None


# --- connecting to the vetted address ---------------------------------------------------------


def test_the_vetted_address_is_used_even_if_the_name_changes_afterwards(
    resolver: Resolver,
) -> None:
    # The first answer is checked; a rebinding second answer would be loopback.
    resolver.answers["rebind.example"] = [["93.184.215.14"], ["127.0.0.1"]]
    target = netguard.vet("https://rebind.example/in.jsonl?x=1")
    assert target.connect_url == "https://93.184.215.14:443/in.jsonl?x=1"
    assert (target.host, target.host_header) == ("rebind.example", "rebind.example")
    assert resolver.calls == ["rebind.example"]


def test_the_request_goes_to_the_checked_address_with_the_original_host_header(
    resolver: Resolver, listener: Listener, connects: list[Any]
) -> None:
    # Vetted: 127.0.0.1 (admitted for the test). Any later lookup would say 10.9.9.9, and
    # urllib3 looking the name up itself would fail: the stub lives in netguard only.
    resolver.answers["rebind.example"] = [["127.0.0.1"], ["10.9.9.9"]]
    assert get(f"http://rebind.example:{listener.port}/in.jsonl?x=1", allow=LOOPBACK) == b"ok"
    assert resolver.calls == ["rebind.example"]
    assert connects == [("127.0.0.1", listener.port)]
    assert listener.requests[0].startswith(b"GET /in.jsonl?x=1 HTTP/1.1\r\n")
    assert listener.header(0, "Host") == f"rebind.example:{listener.port}"


def _certificates(tmp_path: Path, name: str) -> tuple[Path, ssl.SSLContext]:
    """A CA (its PEM path) and a server context holding a certificate for `name` signed by it."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    now = datetime.datetime.now(datetime.UTC)

    def make(subject: str, issuer: Any, issuer_key: Any, *, ca: bool) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer or x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, subject)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
            )
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
        return builder.sign(issuer_key or key, hashes.SHA256()), key

    ca_cert, ca_key = make("netguard test CA", None, None, ca=True)
    cert, key = make(name, ca_cert.subject, ca_key, ca=False)
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    chain = tmp_path / f"{name}.pem"
    chain.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain)
    return ca_path, context


def test_tls_uses_the_original_name_for_sni_and_the_certificate(
    tmp_path: Path, resolver: Resolver, make_listener: Callable[..., Listener], connects: list[Any]
) -> None:
    ca, context = _certificates(tmp_path, "rebind.example")
    listener = make_listener(tls=context)

    def record_sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        listener.server_names.append(name)

    context.sni_callback = record_sni
    resolver.answers["rebind.example"] = [["127.0.0.1"]]
    assert get(f"https://rebind.example:{listener.port}/", allow=LOOPBACK, verify=str(ca)) == b"ok"
    assert listener.server_names == ["rebind.example"]
    assert connects == [("127.0.0.1", listener.port)]


def test_tls_refuses_a_certificate_for_another_name(
    tmp_path: Path, resolver: Resolver, make_listener: Callable[..., Listener]
) -> None:
    ca, context = _certificates(tmp_path, "other.example")
    listener = make_listener(tls=context)
    resolver.answers["rebind.example"] = [["127.0.0.1"]]
    with pytest.raises(OutboundError, match=r"^TLS with rebind\.example failed") as failed:
        get(f"https://rebind.example:{listener.port}/", allow=LOOPBACK, verify=str(ca))
    assert "127.0.0.1" not in str(failed.value)


# --- the allowlist ----------------------------------------------------------------------------


def test_the_allowlist_admits_a_loopback_webhook_receiver(listener: Listener, connects: list[Any]) -> None:
    url = f"http://127.0.0.1:{listener.port}/hooks/batch"
    with pytest.raises(WebhookBlocked, match=r"^webhook_url refused: host 127\.0\.0\.1 is a loopback address$"):
        deliver(url, b'{"job_id": "j"}', "msg_1", timeout=5)
    assert listener.accepted == 0 and connects == []

    assert deliver(url, b'{"job_id": "j"}', "msg_1", timeout=5, allow=LOOPBACK) == 200
    assert listener.accepted == 1
    assert listener.requests[0].startswith(b"POST /hooks/batch HTTP/1.1\r\n")
    assert listener.requests[0].endswith(b'\r\n\r\n{"job_id": "j"}')
    assert listener.header(0, "webhook-id") == "msg_1"
    assert listener.header(0, "Host") == f"127.0.0.1:{listener.port}"


def test_the_allowlist_admits_by_host_name(listener: Listener) -> None:
    assert get(f"http://localhost:{listener.port}/", allow=Allowlist.parse("localhost")) == b"ok"
    with pytest.raises(BlockedURL):
        get(f"http://localhost:{listener.port}/", allow=Allowlist.parse("other.internal, 10.0.0.0/8"))
    assert listener.accepted == 1


def test_allowlist_parsing() -> None:
    allow = Allowlist.parse(" minio , 127.0.0.1, 10.8.0.0/16, [::1], MinIO-2.internal., ,")
    assert allow.hosts == {"minio", "minio-2.internal"}
    assert [str(n) for n in allow.networks] == ["127.0.0.1/32", "10.8.0.0/16", "::1/128"]
    assert allow.admits_address(ipaddress.ip_address("10.8.3.4"))
    assert not allow.admits_address(ipaddress.ip_address("10.9.0.1"))
    assert Allowlist.parse("") == Allowlist()
    for bad in ("10.0.0.0/33", "not a host", "http://minio"):
        with pytest.raises(ValueError, match="outbound_allowlist"):
            Allowlist.parse(bad)


# --- byte cap, timeouts, what errors say --------------------------------------------------------


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage", "http://127.0.0.1:8000", b"k")


def test_fetch_refusals_become_fetch_errors(storage: LocalStorage, listener: Listener) -> None:
    with pytest.raises(FetchError, match=r"^input_file_url refused: host 127\.0\.0\.1 is a loopback address$"):
        fetch_to_storage(f"http://127.0.0.1:{listener.port}/in", storage, "in", max_bytes=100, timeout=5)
    assert listener.accepted == 0 and not storage.exists("in")


def test_fetch_under_the_cap_is_stored(storage: LocalStorage, make_listener: Callable[..., Listener]) -> None:
    body = b"x" * 1000
    listener = make_listener(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body)
    url = f"http://127.0.0.1:{listener.port}/in"
    assert fetch_to_storage(url, storage, "in", max_bytes=1000, timeout=5, allow=LOOPBACK) == 1000
    with storage.open("in") as stored:
        assert stored.read() == body


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "no-content-length"])
def test_the_byte_cap_stops_a_large_body(
    declared: bool, storage: LocalStorage, make_listener: Callable[..., Listener]
) -> None:
    body = b"x" * (4 << 20)
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n" if declared else "HTTP/1.1 200 OK\r\n"
    listener = make_listener(head.encode() + b"Connection: close\r\n\r\n" + body)
    url = f"http://127.0.0.1:{listener.port}/in"
    with pytest.raises(FetchError, match="input file exceeds max_file_bytes=65536"):
        fetch_to_storage(url, storage, "in", max_bytes=65536, timeout=5, allow=LOOPBACK)
    assert not storage.exists("in")


def test_iter_body_counts_what_arrives_not_what_is_declared(make_listener: Callable[..., Listener]) -> None:
    # A server understating its Content-Length is cut off at the declared length by
    # http.client; one sending no length at all is counted as it streams.
    listener = make_listener(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"y" * 5000)
    with (
        netguard.request("GET", f"http://127.0.0.1:{listener.port}/", allow=LOOPBACK, timeout=5) as response,
        pytest.raises(ResponseTooLarge, match="exceeds 4096 bytes"),
    ):
        for _ in netguard.iter_body(response, max_bytes=4096, chunk_size=1024):
            pass


def test_a_silent_server_times_out_cleanly(make_listener: Callable[..., Listener]) -> None:
    listener = make_listener(b"")  # reads the request, never answers
    started = time.monotonic()
    with pytest.raises(OutboundError, match=r"^timed out waiting for 127\.0\.0\.1$"):
        get(f"http://127.0.0.1:{listener.port}/", allow=LOOPBACK, timeout=(2, 0.3))
    assert time.monotonic() - started < 3


def test_a_body_that_stalls_times_out_cleanly(storage: LocalStorage, make_listener: Callable[..., Listener]) -> None:
    listener = make_listener(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", stall_after_reply=True)
    with pytest.raises(FetchError, match="could not fetch input_file_url: timed out"):
        fetch_to_storage(
            f"http://127.0.0.1:{listener.port}/", storage, "in", max_bytes=1000, timeout=0.3, allow=LOOPBACK
        )
    assert not storage.exists("in")


def test_a_webhook_failure_is_retryable_and_a_refusal_is_not(listener: Listener) -> None:
    listener.reply = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 6\r\n\r\nSECRET"
    with pytest.raises(WebhookError) as failed:
        deliver(f"http://127.0.0.1:{listener.port}/", b"{}", "msg_1", timeout=5, allow=LOOPBACK)
    assert not isinstance(failed.value, WebhookBlocked)
    assert "SECRET" not in str(failed.value)
    with pytest.raises(WebhookBlocked):
        deliver("gopher://example.com/", b"{}", "msg_1", timeout=5)


def test_error_messages_do_not_echo_the_response(storage: LocalStorage, make_listener: Callable[..., Listener]) -> None:
    listener = make_listener(b"HTTP/1.1 404 Not Found\r\nContent-Length: 22\r\n\r\nSECRET internal 10.0.0.9")
    with pytest.raises(FetchError) as failed:
        fetch_to_storage(f"http://127.0.0.1:{listener.port}/", storage, "in", max_bytes=1000, timeout=5, allow=LOOPBACK)
    assert str(failed.value) == "fetching input_file_url answered HTTP 404"


# --- through the API: refused at submit, with the field named ------------------------------

API_TARGETS = [host for host, _ in REFUSED_HOSTS[:10]]  # the list: loopback to 0.0.0.0


@pytest.mark.parametrize("field", ["input_file_url", "webhook_url"])
@pytest.mark.parametrize("host", API_TARGETS)
def test_the_api_refuses_non_public_urls_naming_the_field(
    make_app: Any, listener: Listener, connects: list[Any], field: str, host: str
) -> None:
    client = make_app(outbound_allowlist="").test_client()
    url = f"http://{host}:{listener.port}/in.jsonl"
    body = {"model": "instant-test", "input_file_url": "https://example.com/in.jsonl", field: url}
    response = client.post("/v1/batch", json=body)
    assert response.status_code == 422, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["type"] == "validation_error"
    assert list(error["details"]["fields"]) == [field]
    assert error["message"].startswith(f"{field} refused: host {host.strip('[]')} ")
    assert listener.accepted == 0
    assert not [address for address in connects if address[1:] == (listener.port,)]


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://example.com/_x", "ftp://example.com/in.jsonl"])
def test_the_api_refuses_other_schemes(make_app: Any, url: str) -> None:
    client = make_app(outbound_allowlist="").test_client()
    response = client.post("/v1/batch", json={"model": "instant-test", "input_file_url": url})
    assert response.status_code == 422
    assert "input_file_url" in response.get_json()["error"]["details"]["fields"]


def test_the_api_refuses_a_name_that_resolves_to_a_private_address(
    make_app: Any, resolver: Resolver, connects: list[Any]
) -> None:
    resolver.answers["files.example.com"] = [["10.1.2.3"]]
    client = make_app(outbound_allowlist="").test_client()
    body = {"model": "instant-test", "input_file_url": "http://files.example.com/in.jsonl"}
    response = client.post("/v1/batch", json=body)
    assert response.status_code == 422
    message = response.get_json()["error"]["message"]
    assert message == "input_file_url refused: host files.example.com resolves to a private address"
    assert "10.1.2.3" not in response.get_data(as_text=True)  # what the lookup saw stays inside
    assert not [address for address in connects if address[0] == "10.1.2.3"]
