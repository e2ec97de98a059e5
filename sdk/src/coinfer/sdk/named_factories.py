"""Built-ins by the names users type: ``--redundancy faces=iou``, ``--measurement empty``.

Gating's redundancy measures and InFi's measurements are each a table from a name to the
class that builds it. They stay two tables, since the same name stands for a different
object in each (gating's ``class-subset`` lists the labels nobody needs, InFi's the labels
to keep), but this is the one way such a table is keyed, builds an entry and checks the
names a configuration gives, so both refuse an unknown name or bad options alike. A table
keys each class by its own ``name``, so a name is written once, in its class.

Example::

    >>> from coinfer.sdk.errors import InvalidArgumentError
    >>> class Box(dict):
    ...     name = "box"
    >>> SHAPES = NamedFactories("shape", InvalidArgumentError, Box)
    >>> SHAPES.create("box", width=2, height=1)
    {'width': 2, 'height': 1}
    >>> SHAPES.check(["circle"])
    Traceback (most recent call last):
    ...
    coinfer.sdk.errors.InvalidArgumentError: unknown shape(s) circle; choose from box
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, Protocol, TypeVar

from coinfer.sdk.errors import CoinferError

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class NamedFactory(Protocol[T_co]):
    """A class (or any callable) that carries the name users type for what it builds."""

    name: str

    def __call__(self, *args: Any, **kwargs: Any) -> T_co: ...


class NamedFactories(Mapping[str, Callable[..., T]], Generic[T]):
    """A read-only name -> factory table of one kind of built-in (``what``, for messages);
    bad names and options raise ``error``."""

    def __init__(self, what: str, error: type[CoinferError], *factories: NamedFactory[T]) -> None:
        self.what, self.error = what, error
        self._factories: dict[str, Callable[..., T]] = {factory.name: factory for factory in factories}
        if len(self._factories) != len(factories):
            raise self.error(f"two built-in {what}s share a name: {[factory.name for factory in factories]}")

    def __getitem__(self, name: str) -> Callable[..., T]:
        return self._factories[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._factories)

    def __len__(self) -> int:
        return len(self._factories)

    def create(self, name: str, **options: Any) -> T:
        """The built-in called ``name``, made with ``options`` (its constructor's keywords)."""
        try:
            factory = self._factories[name]
        except KeyError:
            raise self.error(f"unknown {self.what} {name!r}; choose one of {', '.join(self)}") from None
        try:
            return factory(**options)
        except TypeError as error:
            raise self.error(f"bad options for {self.what} {name!r}: {error}") from error

    def check(self, names: Iterable[str]) -> None:
        """Refuse a configuration naming built-ins that do not exist, before anything is made."""
        unknown = sorted(set(names) - set(self._factories))
        if unknown:
            raise self.error(f"unknown {self.what}(s) {', '.join(unknown)}; choose from {', '.join(self)}")
