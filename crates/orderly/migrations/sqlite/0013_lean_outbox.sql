-- The outbox with one index where it had four, so a change that records an event writes two
-- B-trees for it (the table and `events_created_at_id`), each a page more in its commit's WAL.
--
-- An event's id is now a UUIDv7 minted from its `created_at`, so `GET /events/{id}` finds it
-- through `events_created_at_id`: no unique index on `id`. The relay reads unpublished events
-- from `outbox_position` on (every event below `published_below` is published; SQLite has one
-- writer and writes events in `seq` order, so none appears below it later), ranking them
-- within their aggregate: no index of unpublished events, by `seq` or by aggregate.
-- SQLite drops a column's UNIQUE only by rebuilding the table.
CREATE TABLE "events_lean" ( "seq" integer NOT NULL PRIMARY KEY, "id" uuid_text NOT NULL, "type" varchar(64) NOT NULL, "aggregate_id" uuid_text NOT NULL, "created_at" timestamp_with_timezone_text NOT NULL, "body" text NOT NULL, "published_at" timestamp_with_timezone_text NULL, "claimed_until" timestamp_with_timezone_text NULL );
INSERT INTO "events_lean" SELECT "seq", "id", "type", "aggregate_id", "created_at", "body", "published_at", "claimed_until" FROM "events";
DROP TABLE "events";
ALTER TABLE "events_lean" RENAME TO "events";
CREATE INDEX "events_created_at_id" ON "events" ("created_at", "id");
CREATE TABLE "outbox_position" ( "id" integer NOT NULL PRIMARY KEY CHECK ("id" = 1), "published_below" integer NOT NULL );
INSERT INTO "outbox_position" ("id", "published_below") VALUES (1, COALESCE((SELECT min("seq") FROM "events" WHERE "published_at" IS NULL), (SELECT max("seq") + 1 FROM "events"), 1));
