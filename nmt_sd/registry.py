"""A generic name -> class registry (fairseq-style short names, explicit imports)."""

from typing import Callable, Dict, List, Optional, Type


class Registry:
    """Maps CLI names to classes. ``register`` refuses duplicates; ``get`` lists valid names."""

    def __init__(self, kind: str, base: Optional[type] = None):
        self.kind = kind
        self.base = base
        self._entries: Dict[str, type] = {}

    def register(self, name: str) -> Callable[[Type], Type]:
        def wrap(cls: Type) -> Type:
            if name in self._entries and self._entries[name] is not cls:
                raise ValueError(f"duplicate {self.kind} name: {name}")
            if self.base is not None and not issubclass(cls, self.base):
                raise ValueError(
                    f"{self.kind} {name} must subclass {self.base.__name__}"
                )
            self._entries[name] = cls
            return cls

        return wrap

    def get(self, name: str) -> type:
        if name not in self._entries:
            from nmt_sd.errors import NmtSdError

            raise NmtSdError(
                f"unknown {self.kind} '{name}' (choose from: {', '.join(self.names())})"
            )
        return self._entries[name]

    def names(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
