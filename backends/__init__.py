"""Backends of xdev, one sub-package each (imported as ``xdev.backends.<name>``).

Every backend package exposes two functions, ``probe()`` and ``open_device(selector)``,
and one :class:`xdev.contract.Device` subclass; the API in ``xdev/`` talks to
backends through that interface only. A backend package may import its third-party
library at module level: ``xdev`` imports the package only on first use.
"""
