-- Idempotency records, shared by every instance.
CREATE TABLE "idempotency_keys" ( "id" varchar(64) NOT NULL PRIMARY KEY, "fingerprint" varchar(64) NOT NULL, "response" blob(1) NULL, "locked_until" timestamp_with_timezone_text NOT NULL, "expires_at" timestamp_with_timezone_text NOT NULL, "created_at" timestamp_with_timezone_text NOT NULL );
CREATE INDEX "idempotency_keys_expires_at" ON "idempotency_keys" ("expires_at");
