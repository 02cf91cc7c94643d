"""Outbound HTTP to URLs that clients give us (input_file_url, webhook_url), safe from SSRF.

A URL is vetted before any connection: http or https only, no userinfo, and every
address its host resolves to must be public. Private, loopback, link-local,
CGNAT, unspecified, multicast, reserved and cloud-metadata addresses are refused,
also when hidden inside IPv6 (IPv4-mapped, NAT64, 6to4) or written in a legacy
IPv4 form (`2852039166`, `0177.0.0.1`, `0x7f.1`, `127.1`): the resolver reads
those forms as it always does, and the check runs on the address it produced.

The request then goes to the very address that was checked, so a DNS answer that
changes between check and connect (rebinding) cannot redirect it. The URL's
hostname is still sent as `Host`, used for TLS SNI and checked against the
certificate. Redirects are never followed, and bodies are read under a byte cap.

Refusals raise BlockedURL; failures of the exchange itself raise OutboundError.
Neither message echoes what the fetch saw (resolved addresses, response bodies):
they name the host as the client wrote it and the rule it broke.

An Allowlist (hosts or CIDRs, empty by default) admits trusted internal targets
such as a local MinIO or a test receiver.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from socket import getaddrinfo  # module-level name, so tests can stub the resolver here alone
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ReadTimeoutError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = ("http", "https")
_DEFAULT_PORTS = {"http": 80, "https": 443}

_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: site-local translation
# Letters, digits and the punctuation of names and IP literals (`%` for an IPv6 zone). Anything
# else (spaces above all: inet_aton stops reading at one) is no host we want to talk to.
_HOST_CHARS = re.compile(r"[a-z0-9._:%-]+")


class OutboundError(Exception):
    """An outbound request failed; the message is safe to show the client."""


class BlockedURL(OutboundError, ValueError):
    """The URL is refused by policy. Trying again cannot help."""


class ResponseTooLarge(OutboundError):
    """The response body exceeded the caller's byte cap."""


@dataclass(frozen=True)
class Allowlist:
    """Targets admitted although not public: exact hostnames, or networks that addresses may fall in."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Allowlist:
        """From a comma-separated setting: `minio, 127.0.0.1, 10.8.0.0/16, [::1]`."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in text.split(","):
            entry = raw.strip().strip("[]").lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if "/" in entry or not _looks_like_hostname(entry):
                    raise ValueError(f"outbound_allowlist: {raw.strip()!r} is neither a host nor a CIDR") from None
                hosts.add(entry.rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def admits_host(self, host: str) -> bool:
        return host in self.hosts

    def admits_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


@dataclass(frozen=True)
class Target:
    """A vetted URL: where to connect (`address`), and what to call the host while there."""

    scheme: str
    host: str  # as the client wrote it (lowercased, IDNA-encoded): Host header, SNI, certificate
    port: int
    explicit_port: bool
    path: str  # path and query, never empty
    address: IPAddress

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" if self.explicit_port else host

    @property
    def connect_url(self) -> str:
        """The URL with the vetted address in place of the host name."""
        address = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{self.scheme}://{address}:{self.port}{self.path}"


def refusal(address: IPAddress) -> str | None:
    """Why `address` may not be contacted ("a private address"), or None if it is public."""
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        address = ipaddress.IPv6Address(str(address).split("%")[0])
    if address in _METADATA:
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            # The IPv4 address decides: ::ffff:8.8.8.8 is as public as 8.8.8.8.
            reason = refusal(embedded)
            return f"{reason} (embedded IPv4)" if reason else None
        if address in _NAT64_LOCAL:
            return "a private address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address in _CGNAT:
        return "a shared (CGNAT) address"
    if address == _BROADCAST:
        return "a broadcast address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "a non-public address"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def parse_literal(host: str) -> IPAddress | None:
    """`host` as an IP address if it is one, in any form the C library accepts (`127.1`, `0x7f.1`)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        # inet_aton is what getaddrinfo applies to IPv4 literals: octal, hex, short and decimal forms.
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the resolver gives for `host`, in its order of preference."""
    try:
        infos = getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise OutboundError(f"host {host} could not be resolved") from None
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise OutboundError(f"host {host} could not be resolved")
    return addresses


def vet(url: str, allow: Allowlist | None = None) -> Target:
    """Check `url` against the rules; returns where to connect. Raises BlockedURL for a refusal,
    OutboundError when the host does not resolve (which may pass)."""
    allow = allow or Allowlist()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BlockedURL("the URL is not valid") from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise BlockedURL("scheme not allowed (only http and https)")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise BlockedURL("credentials in the URL are not allowed")
    raw_host = (parts.hostname or "").rstrip(".")
    if not raw_host:
        raise BlockedURL("the URL has no host")
    try:
        host = raw_host.encode("idna").decode("ascii")
    except UnicodeError:
        host = ""
    if not _HOST_CHARS.fullmatch(host):
        raise BlockedURL("the URL's host is not a valid name")
    explicit_port = port is not None
    port = port if port is not None else _DEFAULT_PORTS[scheme]
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query

    literal = parse_literal(host)
    addresses = [literal] if literal is not None else resolve(host, port)
    if not allow.admits_host(host):
        for address in addresses:
            reason = None if allow.admits_address(address) else refusal(address)
            if reason:
                verb = "is" if literal is not None else "resolves to"
                raise BlockedURL(f"host {raw_host} {verb} {reason}")
    return Target(scheme, host, port, explicit_port, path, addresses[0])


class _PinnedAdapter(HTTPAdapter):
    """Connects wherever the request URL says (the vetted address), but does TLS as `hostname`:
    urllib3 sends `server_hostname` as SNI and matches the certificate against `assert_hostname`."""

    def __init__(self, hostname: str) -> None:
        self._hostname = hostname  # before super(), which builds the pool manager
        super().__init__(max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        # urllib3 drops these two for plain http pools.
        pool_kwargs.update(server_hostname=self._hostname, assert_hostname=self._hostname)
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)


def request(
    method: str,
    url: str,
    *,
    allow: Allowlist | None = None,
    timeout: float | tuple[float, float],
    headers: Mapping[str, str] | None = None,
    data: bytes | None = None,
    verify: bool | str = True,
) -> requests.Response:
    """One request to the vetted address of `url`; the body is left unread (stream it with
    `iter_body`), and the caller closes the response (`with request(...) as response:`).

    `timeout` is requests' (connect, read), or one number for both. A redirect raises
    BlockedURL: it is never followed. `verify` is requests' (a CA bundle path for tests).
    """
    target = vet(url, allow)
    prepared = requests.Request(
        method,
        target.connect_url,
        headers={**requests.utils.default_headers(), **(headers or {}), "Host": target.host_header},
        data=data,
    ).prepare()
    # An adapter alone, not a Session: no proxies or netrc from the environment (a proxy would
    # resolve the name again), no cookies, and no redirect handling to switch off.
    adapter = _PinnedAdapter(target.host)
    try:
        response = adapter.send(prepared, stream=True, timeout=timeout, verify=verify)
    except requests.RequestException as exc:
        raise OutboundError(_describe(exc, target.host)) from None
    finally:
        # Closes only idle connections; the one in use closes when the response does.
        adapter.close()
    response.url = url  # not the address we connected to
    if response.is_redirect or 300 <= response.status_code < 400:
        response.close()
        raise BlockedURL("redirects are not followed")
    return response


def iter_body(response: requests.Response, *, max_bytes: int, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
    """The body in chunks, raising ResponseTooLarge once more than `max_bytes` arrive.

    Content-Length is only used to fail early; the count is what actually arrived
    (after content decoding, so a compressed body cannot slip past the cap)."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ResponseTooLarge(f"the response exceeds {max_bytes} bytes")
    size = 0
    try:
        for chunk in response.iter_content(chunk_size):
            size += len(chunk)
            if size > max_bytes:
                raise ResponseTooLarge(f"the response exceeds {max_bytes} bytes")
            yield chunk
    except requests.RequestException as exc:
        raise OutboundError(_describe(exc, None)) from None


def _describe(exc: requests.RequestException, host: str | None) -> str:
    """A message for a transport failure that names the host as given, never the address."""
    where = f" {host}" if host else ""
    if isinstance(exc, requests.ConnectTimeout):
        return f"timed out connecting to{where or ' the host'}"
    # A read timeout while streaming the body reaches us as a ConnectionError around urllib3's.
    if isinstance(exc, requests.Timeout) or (exc.args and isinstance(exc.args[0], ReadTimeoutError)):
        return f"timed out waiting for{where or ' the host'}"
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS with{where or ' the host'} failed (certificate or handshake)"
    if isinstance(exc, requests.ConnectionError):
        return f"connection to{where or ' the host'} failed"
    return f"request to{where or ' the host'} failed ({type(exc).__name__})"


def _looks_like_hostname(entry: str) -> bool:
    labels = entry.rstrip(".").split(".")
    return all(label and len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum() for label in labels)


__all__ = [
    "Allowlist",
    "BlockedURL",
    "OutboundError",
    "ResponseTooLarge",
    "Target",
    "iter_body",
    "parse_literal",
    "refusal",
    "request",
    "resolve",
    "vet",
]
