"""The prediction log: every answered request (and every shadow answer), later joined by
its feedback label. SQLAlchemy, so SQLite (embedded default) and Postgres (team) share
the code; only `uris.prediction_log` differs. The gateway writes it, the A/B report,
monitoring and retraining read it.

- store.py   the tables, `engine` (schema created and brought up to date), reads and writes
- writer.py  the buffered writer the gateway uses (`LogWriter`, `DeadLetterFile`), so
             requests never wait for the store and a row it refuses never blocks the rest
"""

from __future__ import annotations

from ftops.predlog.store import (ADDED_COLUMNS, CHUNK_ROWS, ROUTES, AlreadyLabelled, Record, add_feedback, engine,
                                 feedback, feedback_history, labelled, metadata, predictions, read, read_chunked,
                                 request_models, served_model, write)
from ftops.predlog.writer import DeadLetterFile, LogWriter, describe_error, store_down

__all__ = ["ADDED_COLUMNS", "CHUNK_ROWS", "ROUTES", "AlreadyLabelled", "DeadLetterFile", "LogWriter", "Record",
           "add_feedback", "describe_error", "engine", "feedback", "feedback_history", "labelled", "metadata",
           "predictions", "read", "read_chunked", "request_models", "served_model", "store_down", "write"]
