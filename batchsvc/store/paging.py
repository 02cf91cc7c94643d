"""Newest-first cursor paging over the sorted-set indexes of jobs and files.

An index can name a record that is already gone (it is removed from the index
after the record); a page skips such ids and reads further until it is full, so
`has_more` is right however many records vanished."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def newest_first(client: Any, index: str, *, limit: int, after: str | None) -> list[str] | None:
    """One page of a sorted-set index, highest score first, after the member
    `after` (None when `after` is not in the index). The cursor is a rank, not a
    score, so members with equal scores are neither skipped nor repeated."""
    start = 0
    if after is not None:
        rank = client.zrevrank(index, after)
        if rank is None:
            return None
        start = rank + 1
    return [i.decode() for i in client.zrevrange(index, start, start + limit - 1)]


def fill_page(
    ids: Callable[[int, str | None], list[str]],
    get: Callable[[str], T | None],
    *,
    limit: int,
    after: str | None,
    keep: Callable[[T], bool] = lambda _: True,
) -> tuple[list[T], bool]:
    """Up to `limit` items after the cursor, newest first, and whether more follow.
    `get` answers None for an id whose record is gone; such ids, and items `keep`
    refuses, are skipped, and further ids are read until the page is full."""
    found: list[T] = []
    cursor = after
    while len(found) <= limit:
        batch = ids(limit + 1, cursor)
        for item_id in batch:
            item = get(item_id)
            if item is not None and keep(item):
                found.append(item)
        if len(batch) < limit + 1:
            break
        cursor = batch[-1]
    return found[:limit], len(found) > limit


class PagedIndex(Generic[T]):
    """What a record store with a newest-first index offers its list views."""

    def list_ids(self, *, limit: int, after: str | None, tenant: str | None) -> list[str]:
        raise NotImplementedError

    def find(self, record_id: str) -> T | None:
        raise NotImplementedError

    def page(
        self, *, limit: int, after: str | None, tenant: str | None, keep: Callable[[T], bool] = lambda _: True
    ) -> tuple[list[T], bool]:
        """Up to `limit` records after the cursor, newest first, and whether more follow."""
        return fill_page(
            lambda n, cursor: self.list_ids(limit=n, after=cursor, tenant=tenant),
            self.find,
            limit=limit,
            after=after,
            keep=keep,
        )

    def newest(self, *, tenant: str | None, batch: int = 100) -> Iterator[T]:
        """Every record, newest first, read `batch` ids at a time; a caller that has
        seen enough stops iterating, and nothing more is read."""
        after: str | None = None
        while True:
            ids = self.list_ids(limit=batch, after=after, tenant=tenant)
            for record_id in ids:
                record = self.find(record_id)
                if record is not None:
                    yield record
            if len(ids) < batch:
                return
            after = ids[-1]
