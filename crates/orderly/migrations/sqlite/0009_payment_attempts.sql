-- Provider calls are written ahead: one `payment_attempts` row per charge, refund or reversal,
-- committed before the call goes out and settled when its outcome is recorded. It replaces
-- the in-flight marks on orders and payments and the `unsettled_charges` table: a charge left
-- unsettled there becomes an unsettled attempt, and so does an order whose mark was set when
-- the previous release stopped (its call may have reached the provider).
--
-- Payments and refunds also become unique by the provider's id, so one charge or refund at
-- the provider can never be recorded twice.
CREATE TABLE "payment_attempts" ( "id" uuid_text NOT NULL PRIMARY KEY, "kind" varchar(16) NOT NULL, "order_id" uuid_text NOT NULL, "payment_id" uuid_text NULL, "refund_id" uuid_text NULL, "user_id" uuid_text NOT NULL, "provider_key" varchar(255) NOT NULL, "charge_reference" varchar(255) NULL, "amount" bigint NOT NULL, "currency" varchar(3) NOT NULL, "idempotency_claim" varchar(255) NULL, "hold_until" timestamp_with_timezone_text NOT NULL, "created_at" timestamp_with_timezone_text NOT NULL, "settled_at" timestamp_with_timezone_text NULL, "outcome" varchar(16) NULL, "reconcile_after" timestamp_with_timezone_text NULL, CHECK ("amount" > 0) );
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
-- ...then orders still marked in flight and not listed there: a new UUIDv7 as a 16-byte blob
-- (milliseconds since the epoch, version 7, RFC 4122 variant, random rest; each computed
-- byte is picked out of "bytes", which holds 0x00 to 0xFF in order), the key
-- `orderly-charge-{order id}-{declined payments of the order}` (the rule of
-- `payments::service::charge_key`, the id lowercase and hyphenated), the order's total, held
-- and created at the mark's end, kept as stored (RFC 3339 text, as the release wrote it).
-- A mark without an end fails the migration, as it did in the release's Rust migration.
INSERT INTO "payment_attempts" ("id", "kind", "order_id", "user_id", "provider_key", "amount", "currency", "hold_until", "created_at")
WITH "bytes" ("b") AS (
    SELECT X'000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F202122232425262728292A2B2C2D2E2F303132333435363738393A3B3C3D3E3F404142434445464748494A4B4C4D4E4F505152535455565758595A5B5C5D5E5F606162636465666768696A6B6C6D6E6F707172737475767778797A7B7C7D7E7F808182838485868788898A8B8C8D8E8F909192939495969798999A9B9C9D9E9FA0A1A2A3A4A5A6A7A8A9AAABACADAEAFB0B1B2B3B4B5B6B7B8B9BABBBCBDBEBFC0C1C2C3C4C5C6C7C8C9CACBCCCDCECFD0D1D2D3D4D5D6D7D8D9DADBDCDDDEDFE0E1E2E3E4E5E6E7E8E9EAEBECEDEEEFF0F1F2F3F4F5F6F7F8F9FAFBFCFDFEFF'
),
"clock" ("ms") AS (
    SELECT CAST(strftime('%s', 'now') AS INTEGER) * 1000 + CAST(substr(strftime('%f', 'now'), 4) AS INTEGER)
)
SELECT
    CAST(
        substr("b", (("ms" >> 40) & 255) + 1, 1) || substr("b", (("ms" >> 32) & 255) + 1, 1)
        || substr("b", (("ms" >> 24) & 255) + 1, 1) || substr("b", (("ms" >> 16) & 255) + 1, 1)
        || substr("b", (("ms" >> 8) & 255) + 1, 1) || substr("b", ("ms" & 255) + 1, 1)
        || substr("b", (112 | (random() & 15)) + 1, 1) || randomblob(1)
        || substr("b", (128 | (random() & 63)) + 1, 1) || randomblob(7)
    AS BLOB),
    'charge',
    "orders"."id",
    "orders"."user_id",
    'orderly-charge-' || lower(
        substr(hex("orders"."id"), 1, 8) || '-' || substr(hex("orders"."id"), 9, 4) || '-'
        || substr(hex("orders"."id"), 13, 4) || '-' || substr(hex("orders"."id"), 17, 4) || '-'
        || substr(hex("orders"."id"), 21, 12))
    || '-' || (
        SELECT COUNT("order_id") FROM "payments"
        WHERE "payments"."order_id" = "orders"."id" AND "payments"."status" = 'failed'
    ),
    "orders"."total",
    "orders"."currency",
    "orders"."payment_attempt_until",
    "orders"."payment_attempt_until"
FROM "orders", "bytes", "clock"
WHERE "orders"."payment_attempt" IS NOT NULL
    AND "orders"."id" NOT IN (SELECT "order_id" FROM "unsettled_charges");
DROP TABLE "unsettled_charges";
ALTER TABLE "orders" DROP COLUMN "payment_attempt";
ALTER TABLE "orders" DROP COLUMN "payment_attempt_until";
ALTER TABLE "payments" DROP COLUMN "refund_attempt";
ALTER TABLE "payments" DROP COLUMN "refund_attempt_until";
