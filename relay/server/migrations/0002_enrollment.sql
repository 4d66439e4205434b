-- Device enrollment (RFC 8628 shape) and the certificates the device CA issued.

CREATE TABLE enrollments (
    id TEXT PRIMARY KEY,
    -- SHA-256 of the device code: the device's polling secret.
    device_code_hash TEXT NOT NULL UNIQUE,
    -- What the owner compares, "BCDF-GHJK".
    user_code TEXT NOT NULL,
    csr_pem TEXT NOT NULL,
    -- DeviceFacts as JSON.
    facts TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'denied', 'issued')),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    last_poll_at BIGINT,
    org_id TEXT REFERENCES organizations(id) ON DELETE CASCADE,
    sender_id TEXT REFERENCES senders(id) ON DELETE CASCADE,
    claimed_by TEXT REFERENCES users(id) ON DELETE SET NULL,
    certificate_pem TEXT,
    not_after BIGINT
);
CREATE INDEX enrollments_user_code ON enrollments(user_code, state);

CREATE TABLE device_certificates (
    serial TEXT PRIMARY KEY,
    sender_id TEXT NOT NULL REFERENCES senders(id) ON DELETE CASCADE,
    issued_at BIGINT NOT NULL,
    not_after BIGINT NOT NULL
);
CREATE INDEX device_certificates_sender ON device_certificates(sender_id);

-- A revoked device is refused by the broker; its row stays for the history.
ALTER TABLE senders ADD COLUMN revoked_at BIGINT;
