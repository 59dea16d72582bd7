-- Idempotency records, shared by every instance.
CREATE TABLE "idempotency_keys" ( "id" varchar(64) NOT NULL PRIMARY KEY, "fingerprint" varchar(64) NOT NULL, "response" bytea NULL, "locked_until" timestamp with time zone NOT NULL, "expires_at" timestamp with time zone NOT NULL, "created_at" timestamp with time zone NOT NULL );
CREATE INDEX "idempotency_keys_expires_at" ON "idempotency_keys" ("expires_at");
