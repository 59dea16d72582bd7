-- Charges whose outcome is unknown (the provider timed out or failed mid-call): one row per
-- order until a later attempt or the reconciler learns what happened at the provider.
CREATE TABLE "unsettled_charges" ( "order_id" uuid NOT NULL PRIMARY KEY, "user_id" uuid NOT NULL, "provider_key" varchar(255) NOT NULL, "amount" bigint NOT NULL, "currency" varchar(3) NOT NULL, "created_at" timestamp with time zone NOT NULL );
