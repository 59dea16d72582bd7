-- The W3C `traceparent` of the span that wrote an event, and of the span that published the
-- event a delivery sends, so the work done later continues the trace. NULL when spans were
-- not being exported.
ALTER TABLE "events" ADD COLUMN "traceparent" text NULL;
ALTER TABLE "webhook_deliveries" ADD COLUMN "traceparent" text NULL;
