-- Background jobs. The row is the truth: an announcement over RabbitMQ only wakes a worker
-- sooner. A job is `queued` (may run once `due_at` has passed), `running` (a worker holds it
-- until `due_at`, its lease, which the worker renews while it works), `succeeded` or `failed`
-- (out of attempts; `last_error` says why). `attempts` counts the claims: every write of a
-- running job names the attempt it belongs to, so a worker whose lease lapsed and was taken
-- over changes nothing.
CREATE TABLE "jobs" ( "id" uuid NOT NULL PRIMARY KEY, "kind" varchar(32) NOT NULL, "subject_id" uuid NOT NULL, "status" varchar(16) NOT NULL, "attempts" bigint NOT NULL, "max_attempts" bigint NOT NULL, "due_at" timestamp with time zone NOT NULL, "last_error" text NULL, "created_at" timestamp with time zone NOT NULL, "updated_at" timestamp with time zone NOT NULL, "finished_at" timestamp with time zone NULL );
-- The claim's scan: due jobs, queued or with a lapsed lease, oldest due first.
CREATE INDEX "jobs_due" ON "jobs" ("due_at") WHERE "status" IN ('queued', 'running');
CREATE INDEX "jobs_subject_id" ON "jobs" ("subject_id");
-- Exports. Their CSV is kept here, in chunks, so any instance can serve the download. A
-- running export records how far it got (`cursor_created_at`, `cursor_id`: the last order
-- written) with each chunk, so a worker that takes over a crashed export goes on from there.
-- `scope_user_id` is whose orders it exports (NULL: everyone's, for an admin).
CREATE TABLE "reports" ( "id" uuid NOT NULL PRIMARY KEY, "user_id" uuid NOT NULL, "kind" varchar(32) NOT NULL, "scope_user_id" uuid NULL, "created_after" timestamp with time zone NULL, "created_before" timestamp with time zone NOT NULL, "status" varchar(16) NOT NULL, "row_count" bigint NOT NULL, "total_rows" bigint NULL, "cursor_created_at" timestamp with time zone NULL, "cursor_id" uuid NULL, "chunk_count" bigint NOT NULL, "byte_count" bigint NOT NULL, "error" text NULL, "created_at" timestamp with time zone NOT NULL, "updated_at" timestamp with time zone NOT NULL, "finished_at" timestamp with time zone NULL, "expires_at" timestamp with time zone NOT NULL );
CREATE INDEX "reports_expires_at" ON "reports" ("expires_at");
CREATE TABLE "report_chunks" ( "report_id" uuid NOT NULL, "seq" bigint NOT NULL, "data" bytea NOT NULL, PRIMARY KEY ("report_id", "seq") );
