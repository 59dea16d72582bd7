-- Webhook endpoints and their deliveries.
--
-- An endpoint's `events` is a JSON array of event types (or `*`). Its `secret` signs every
-- delivery; after a rotation `previous_secret` signs too, until `previous_secret_expires_at`.
-- `status` is `enabled` or `disabled` (`disabled_reason` says why: the receiver answered 410,
-- or it kept failing). `failing_since` is the first failure after the last success.
CREATE TABLE "webhook_endpoints" ( "id" uuid NOT NULL PRIMARY KEY, "url" text NOT NULL, "description" text NULL, "events" text NOT NULL, "secret" text NOT NULL, "previous_secret" text NULL, "previous_secret_expires_at" timestamp with time zone NULL, "status" varchar(16) NOT NULL, "disabled_reason" text NULL, "failing_since" timestamp with time zone NULL, "last_success_at" timestamp with time zone NULL, "created_at" timestamp with time zone NOT NULL, "updated_at" timestamp with time zone NOT NULL );
CREATE INDEX "webhook_endpoints_created_at_id" ON "webhook_endpoints" ("created_at", "id");
-- One delivery per endpoint and event (the relay may offer an event twice; the second is a
-- no-op). `status`: `pending` (attempted once `next_attempt_at` has passed and no live claim
-- holds it), `succeeded`, or `failed` (out of attempts, or its endpoint was disabled).
-- `attempt_count` counts claims; an attempt's outcome is written only if the count is still
-- the one it claimed, so a worker whose claim lapsed and was taken over changes nothing.
-- `attempts` is a JSON array of what each attempt saw.
CREATE TABLE "webhook_deliveries" ( "id" uuid NOT NULL PRIMARY KEY, "endpoint_id" uuid NOT NULL REFERENCES "webhook_endpoints" ("id") ON DELETE CASCADE, "event_id" uuid NOT NULL, "event_type" varchar(64) NOT NULL, "status" varchar(16) NOT NULL, "attempt_count" bigint NOT NULL, "next_attempt_at" timestamp with time zone NULL, "claimed_until" timestamp with time zone NULL, "attempts" text NOT NULL, "created_at" timestamp with time zone NOT NULL, "updated_at" timestamp with time zone NOT NULL, UNIQUE ("endpoint_id", "event_id") );
CREATE INDEX "webhook_deliveries_endpoint_created_at" ON "webhook_deliveries" ("endpoint_id", "created_at", "id");
-- The runner's scans: which endpoints have deliveries due, then each one's oldest due.
CREATE INDEX "webhook_deliveries_due" ON "webhook_deliveries" ("next_attempt_at") WHERE "status" = 'pending';
CREATE INDEX "webhook_deliveries_endpoint_due" ON "webhook_deliveries" ("endpoint_id", "next_attempt_at") WHERE "status" = 'pending';
