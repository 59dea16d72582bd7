-- The transactional outbox. Every change an event type names inserts its event here in the
-- change's own transaction, so an event exists if and only if its change committed. `body` is
-- the event exactly as `GET /events/{id}` serves it and the relay publishes it.
--
-- `seq` orders events as they were written: an aggregate's changes (an order's, a user's) hold
-- its row lock, so within one aggregate `seq` is also the order in which they committed. The
-- relay claims an event only when no earlier event of its aggregate is still unpublished, which
-- keeps that order however many relays run. `claimed_until` is a relay's lease on the event;
-- an event is published once `published_at` is set, after the broker confirmed it.
CREATE TABLE "events" ( "seq" bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "id" uuid NOT NULL UNIQUE, "type" varchar(64) NOT NULL, "aggregate_id" uuid NOT NULL, "created_at" timestamp with time zone NOT NULL, "body" text NOT NULL, "published_at" timestamp with time zone NULL, "claimed_until" timestamp with time zone NULL );
-- Listing, newest or oldest first (a `type` filter reads the same index: every index here is
-- one more written with each change that records an event).
CREATE INDEX "events_created_at_id" ON "events" ("created_at", "id");
-- Only unpublished events are in these two: the relay's scan, oldest first, and the check that
-- an event is the first unpublished one of its aggregate. Publishing an event leaves both.
CREATE INDEX "events_unpublished" ON "events" ("seq") WHERE "published_at" IS NULL;
CREATE INDEX "events_unpublished_aggregate" ON "events" ("aggregate_id", "seq") WHERE "published_at" IS NULL;
