"""A webhook receiver on loopback: the loopback test server, seen as the
deliveries it got, each with its `webhook-id` and the status it was answered
with. Its answer can be changed mid-test (`receiver.answer = 500`)."""

from __future__ import annotations

from tests.support.http import LoopbackHTTPServer, Received


class WebhookReceiver:
    def __init__(self) -> None:
        self._server = LoopbackHTTPServer()

    @property
    def answer(self) -> int:
        return self._server.post_status

    @answer.setter
    def answer(self, status: int) -> None:
        self._server.post_status = status

    @property
    def url(self) -> str:
        return f"{self._server.url}/hooks"

    @property
    def port(self) -> int:
        return int(self._server.url.rsplit(":", 1)[1])

    def start(self) -> WebhookReceiver:
        self._server.start()
        return self

    def deliveries(self, job_id: str | None = None) -> list[Received]:
        return [d for d in self._server.posts() if job_id is None or d.json().get("job_id") == job_id]

    def stop(self) -> None:
        self._server.stop()
