-- Payments, refunds and the ledger. Orders and payments gain an in-flight marker, so one
-- provider call at a time runs per order (charge) and per payment (refund).
ALTER TABLE "orders" ADD COLUMN "payment_attempt" uuid_text NULL;
ALTER TABLE "orders" ADD COLUMN "payment_attempt_until" timestamp_with_timezone_text NULL;
CREATE TABLE "payments" ( "id" uuid_text NOT NULL PRIMARY KEY, "order_id" uuid_text NOT NULL, "user_id" uuid_text NOT NULL, "amount" bigint NOT NULL, "currency" varchar(3) NOT NULL, "status" varchar(16) NOT NULL, "failure_code" varchar(64) NULL, "refunded_amount" bigint NOT NULL, "provider_reference" varchar(255) NULL, "refund_attempt" uuid_text NULL, "refund_attempt_until" timestamp_with_timezone_text NULL, "created_at" timestamp_with_timezone_text NOT NULL, "updated_at" timestamp_with_timezone_text NOT NULL, FOREIGN KEY ("order_id") REFERENCES "orders" ("id"), CHECK ("refunded_amount" >= 0), CHECK ("refunded_amount" <= "amount") );
-- A customer's list seeks on the first index, an admin's on the second; an order's
-- payments are found through the third.
CREATE INDEX "payments_user_id_created_at_id" ON "payments" ("user_id", "created_at", "id");
CREATE INDEX "payments_created_at_id" ON "payments" ("created_at", "id");
CREATE INDEX "payments_order_id" ON "payments" ("order_id");
CREATE TABLE "refunds" ( "id" uuid_text NOT NULL PRIMARY KEY, "payment_id" uuid_text NOT NULL, "amount" bigint NOT NULL, "currency" varchar(3) NOT NULL, "provider_reference" varchar(255) NOT NULL, "created_at" timestamp_with_timezone_text NOT NULL, FOREIGN KEY ("payment_id") REFERENCES "payments" ("id"), CHECK ("amount" > 0) );
CREATE INDEX "refunds_payment_id" ON "refunds" ("payment_id");
CREATE TABLE "transactions" ( "id" uuid_text NOT NULL PRIMARY KEY, "kind" varchar(16) NOT NULL, "payment_id" uuid_text NOT NULL, "refund_id" uuid_text NULL, "order_id" uuid_text NOT NULL, "amount" bigint NOT NULL, "currency" varchar(3) NOT NULL, "created_at" timestamp_with_timezone_text NOT NULL, FOREIGN KEY ("payment_id") REFERENCES "payments" ("id") );
CREATE INDEX "transactions_created_at_id" ON "transactions" ("created_at", "id");
