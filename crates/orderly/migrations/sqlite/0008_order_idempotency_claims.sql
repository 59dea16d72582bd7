-- Orders remember the idempotency claim that placed them, so a retry that re-runs after the
-- first attempt committed but died before its response was kept finds the order instead of
-- placing another.
ALTER TABLE "orders" ADD COLUMN "idempotency_claim" varchar(64) NULL;
CREATE UNIQUE INDEX "orders_idempotency_claim_key" ON "orders" ("idempotency_claim");
