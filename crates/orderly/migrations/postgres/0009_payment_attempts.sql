-- Provider calls are written ahead: one `payment_attempts` row per charge, refund or reversal,
-- committed before the call goes out and settled when its outcome is recorded. It replaces
-- the in-flight marks on orders and payments and the `unsettled_charges` table: a charge left
-- unsettled there becomes an unsettled attempt, and so does an order whose mark was set when
-- the previous release stopped (its call may have reached the provider).
--
-- Payments and refunds also become unique by the provider's id, so one charge or refund at
-- the provider can never be recorded twice.
CREATE TABLE "payment_attempts" ( "id" uuid NOT NULL PRIMARY KEY, "kind" varchar(16) NOT NULL, "order_id" uuid NOT NULL, "payment_id" uuid NULL, "refund_id" uuid NULL, "user_id" uuid NOT NULL, "provider_key" varchar(255) NOT NULL, "charge_reference" varchar(255) NULL, "amount" bigint NOT NULL, "currency" varchar(3) NOT NULL, "idempotency_claim" varchar(255) NULL, "hold_until" timestamp with time zone NOT NULL, "created_at" timestamp with time zone NOT NULL, "settled_at" timestamp with time zone NULL, "outcome" varchar(16) NULL, "reconcile_after" timestamp with time zone NULL, CHECK ("amount" > 0) );
-- The reconciler scans the unsettled ones oldest first; a charge checks its order's
-- attempts, a refund its payment's, a retried request its claim's.
CREATE INDEX "payment_attempts_unsettled" ON "payment_attempts" ("settled_at", "created_at");
CREATE INDEX "payment_attempts_order_id" ON "payment_attempts" ("order_id");
CREATE INDEX "payment_attempts_payment_id" ON "payment_attempts" ("payment_id");
CREATE INDEX "payment_attempts_idempotency_claim" ON "payment_attempts" ("idempotency_claim");
CREATE UNIQUE INDEX "payments_provider_reference_key" ON "payments" ("provider_reference");
CREATE UNIQUE INDEX "refunds_provider_reference_key" ON "refunds" ("provider_reference");
-- Every charge the previous release may have left unrecorded becomes an unsettled attempt
-- under the key it was made with. First the rows of `unsettled_charges` (the attempt takes
-- the order's id as its own)...
INSERT INTO payment_attempts (id, kind, order_id, user_id, provider_key, amount, currency, hold_until, created_at) SELECT order_id, 'charge', order_id, user_id, provider_key, amount, currency, created_at, created_at FROM unsettled_charges;
-- ...then orders still marked in flight and not listed there: a new UUIDv7 (milliseconds
-- since the epoch, version 7, RFC 4122 variant, random rest), the key
-- `orderly-charge-{order id}-{declined payments of the order}` (the rule of
-- `payments::service::charge_key`), the order's total, held and created at the mark's end.
-- A mark without an end fails the migration, as it did in the release's Rust migration.
INSERT INTO "payment_attempts" ("id", "kind", "order_id", "user_id", "provider_key", "amount", "currency", "hold_until", "created_at")
SELECT
    encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
        placing substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
        FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid,
    'charge',
    "orders"."id",
    "orders"."user_id",
    'orderly-charge-' || "orders"."id"::text || '-' || (
        SELECT COUNT("order_id") FROM "payments"
        WHERE "payments"."order_id" = "orders"."id" AND "payments"."status" = 'failed'
    )::text,
    "orders"."total",
    "orders"."currency",
    "orders"."payment_attempt_until",
    "orders"."payment_attempt_until"
FROM "orders"
WHERE "orders"."payment_attempt" IS NOT NULL
    AND "orders"."id" NOT IN (SELECT "order_id" FROM "unsettled_charges");
DROP TABLE "unsettled_charges";
ALTER TABLE "orders" DROP COLUMN "payment_attempt";
ALTER TABLE "orders" DROP COLUMN "payment_attempt_until";
ALTER TABLE "payments" DROP COLUMN "refund_attempt";
ALTER TABLE "payments" DROP COLUMN "refund_attempt_until";
