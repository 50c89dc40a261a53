"""Reading a streamed dataset through transient network errors, without changing what is read.

A stream is read block by block; after each block its ``state_dict()`` (datasets' exact position) is kept. When
fetching a block fails with a transient error (connection reset or refused, a timeout, an HTTP 5xx or 429) the
dataset is opened again, the kept state loaded, and the same block fetched again, after a backoff of
``BACKOFF_S * 2**(attempt-1)`` seconds (at most ``MAX_BACKOFF_S``), up to ``MAX_RETRIES`` times in a row; every
retry is logged. The blocks that come out are the ones an error-free read gives, in the same order. Any other
error, or one more than ``MAX_RETRIES``, stops the stream.
"""
from __future__ import annotations

import logging
import socket
import time

from ...errors import ConfigError, one_line

logger = logging.getLogger(__name__)
MAX_RETRIES = 8
BACKOFF_S = 2.0
MAX_BACKOFF_S = 120.0
_TRANSIENT_NAMES = {"ConnectTimeout", "ReadTimeout", "ConnectError", "ReadError", "RemoteProtocolError",
                    "ChunkedEncodingError", "ProtocolError", "ServerDisconnectedError", "ClientConnectionError",
                    "ClientPayloadError", "IncompleteRead", "Timeout", "ConnectionError"}


def _status(error) -> int | None:
    response = getattr(error, "response", None)
    code = getattr(response, "status_code", None) or getattr(error, "status", None)
    return code if isinstance(code, int) else None


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a network hiccup worth another try."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (ConnectionError, TimeoutError, socket.timeout)):
            return True
        status = _status(error)
        if status is not None and (status >= 500 or status == 429):
            return True
        if type(error).__name__ in _TRANSIENT_NAMES:
            return True
        error = error.__cause__ or error.__context__
    return False


def resilient_blocks(open_dataset, batch_size: int, where: str, state=None):
    """``(block, state after it)`` of ``open_dataset(state)`` read ``batch_size`` rows at a time, through
    transient errors (``open_dataset(None)`` opens it from the start)."""
    attempt = 0
    while True:
        dataset = open_dataset(state)
        try:
            for block in dataset.iter(batch_size=batch_size):
                state, attempt = dataset.state_dict(), 0
                yield block, state
            return
        except ConfigError:
            raise
        except Exception as error:  # noqa: BLE001 - sorted into transient or not just below
            if not is_transient(error):
                raise
            attempt += 1
            if attempt > MAX_RETRIES:
                raise ConfigError(f"reading {where} failed {MAX_RETRIES + 1} times in a row ({type(error).__name__}: "
                                  f"{one_line(error)}); check the network, or prepare the data once with "
                                  f"'alphadecay prepare-data' and train from the folder") from None
            wait = min(MAX_BACKOFF_S, BACKOFF_S * 2 ** (attempt - 1))
            logger.warning("reading %s: %s: %s; retry %d of %d in %.0f s from the same position", where,
                           type(error).__name__, one_line(error), attempt, MAX_RETRIES, wait)
            time.sleep(wait)
