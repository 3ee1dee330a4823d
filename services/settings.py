"""The one settings object every service and command reads (environment, then flags)."""

from __future__ import annotations

import os

import msgspec

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    nats_url: str = DEFAULT_NATS_URL
    # JetStream's Nats-Msg-Id window; idempotency beyond it comes from the log itself.
    duplicate_window_s: float = 120.0
    replicas: int = 1
    # How long a client waits for one reply before it retries (reusing event ids).
    request_timeout_s: float = 10.0
    # Access control and TLS (`casetrail up --auth`, services.access): the nkey seed file
    # this process authenticates with, and the PEM files of TLS connections.
    credentials: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        env = os.environ
        values: dict[str, object] = {}
        if "CASETRAIL_NATS_URL" in env:
            values["nats_url"] = env["CASETRAIL_NATS_URL"]
        if "CASETRAIL_DUPLICATE_WINDOW" in env:
            values["duplicate_window_s"] = float(env["CASETRAIL_DUPLICATE_WINDOW"])
        if "CASETRAIL_REPLICAS" in env:
            values["replicas"] = int(env["CASETRAIL_REPLICAS"])
        if "CASETRAIL_REQUEST_TIMEOUT" in env:
            values["request_timeout_s"] = float(env["CASETRAIL_REQUEST_TIMEOUT"])
        for name in ("credentials", "tls_ca", "tls_cert", "tls_key"):
            if env.get(f"CASETRAIL_{name.upper()}"):
                values[name] = env[f"CASETRAIL_{name.upper()}"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
