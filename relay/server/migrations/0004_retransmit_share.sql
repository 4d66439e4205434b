-- Each link's share of retransmissions among what it sent, per mille, beside
-- its loss (packets it carried that the receiver asked for again).
ALTER TABLE telemetry ADD COLUMN retransmit_permille BIGINT NOT NULL DEFAULT 0;
