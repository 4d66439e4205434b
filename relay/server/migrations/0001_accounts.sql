-- Portable SQL: the same migration runs on SQLite and PostgreSQL through
-- sqlx's Any driver, so ids are TEXT (random, unguessable), times are BIGINT
-- milliseconds since the epoch and binary data is base64 TEXT.

CREATE TABLE organizations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE memberships (
    org_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('owner', 'operator', 'viewer')),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX memberships_user ON memberships(user_id);

CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions(user_id);

CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('owner', 'operator', 'viewer')),
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT
);
CREATE INDEX api_tokens_org ON api_tokens(org_id);

CREATE TABLE senders (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    online BIGINT NOT NULL DEFAULT 0,
    last_seen_at BIGINT,
    current_stream_id TEXT,
    inventory TEXT NOT NULL DEFAULT '{}',
    settings TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL
);
CREATE INDEX senders_org_name ON senders(org_id, name);

CREATE TABLE destinations (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('rtmp', 'srt', 'hls', 'record')),
    -- The non-secret part: server URL for rtmp/srt, options for hls/record.
    target TEXT NOT NULL,
    -- Stream key or SRT passphrase, encrypted at rest (nonce || ciphertext, base64).
    secret_enc TEXT,
    -- Last characters of the secret, for a masked display.
    secret_hint TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX destinations_org ON destinations(org_id, name);

CREATE TABLE streams (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    sender_id TEXT NOT NULL REFERENCES senders(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    end_reason TEXT
);
CREATE INDEX streams_org_started ON streams(org_id, started_at);

CREATE TABLE stream_outputs (
    stream_id TEXT NOT NULL REFERENCES streams(id) ON DELETE CASCADE,
    destination_id TEXT NOT NULL,
    destination_name TEXT NOT NULL,
    state TEXT NOT NULL,
    bytes BIGINT NOT NULL DEFAULT 0,
    reconnects BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    PRIMARY KEY (stream_id, destination_id)
);

CREATE TABLE telemetry (
    sender_id TEXT NOT NULL REFERENCES senders(id) ON DELETE CASCADE,
    ts BIGINT NOT NULL,
    link TEXT NOT NULL,
    kbps BIGINT NOT NULL,
    rtt_ms BIGINT NOT NULL,
    loss_permille BIGINT NOT NULL
);
CREATE INDEX telemetry_sender_ts ON telemetry(sender_id, ts);
