-- Two indexes of payment attempts become partial: an attempt leaves the unsettled index when it
-- is settled (one index change, not two), and a charge enters the payment index only once its
-- payment exists (one change at settlement, not one at insertion and two at settlement). Every
-- query through them states the index's condition (`settled_at IS NULL`, `payment_id = $n`).
DROP INDEX "payment_attempts_unsettled";
CREATE INDEX "payment_attempts_unsettled" ON "payment_attempts" ("created_at") WHERE "settled_at" IS NULL;
DROP INDEX "payment_attempts_payment_id";
CREATE INDEX "payment_attempts_payment_id" ON "payment_attempts" ("payment_id") WHERE "payment_id" IS NOT NULL;
