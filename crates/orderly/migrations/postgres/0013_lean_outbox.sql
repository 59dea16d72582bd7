-- An event's id is now a UUIDv7 minted from its `created_at`, so it is found through
-- `events_created_at_id` and needs no unique index of its own: one B-tree fewer written with
-- every change that records an event. (The relay's index of unpublished events by aggregate
-- stays: its claims lock rows with `SKIP LOCKED`, which a ranking over a window cannot do.)
ALTER TABLE "events" DROP CONSTRAINT "events_id_key";
