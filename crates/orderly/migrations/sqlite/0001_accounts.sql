-- Users, refresh-token families and API keys.
CREATE TABLE "users" ( "id" uuid_text NOT NULL PRIMARY KEY, "email" varchar(254) NOT NULL UNIQUE, "name" varchar(400) NOT NULL, "role" varchar(16) NOT NULL, "password_hash" varchar NOT NULL, "version" bigint NOT NULL, "created_at" timestamp_with_timezone_text NOT NULL, "updated_at" timestamp_with_timezone_text NOT NULL );
CREATE INDEX "users_created_at_id" ON "users" ("created_at", "id");
CREATE TABLE "refresh_tokens" ( "id" uuid_text NOT NULL PRIMARY KEY, "family_id" uuid_text NOT NULL, "user_id" uuid_text NOT NULL, "token_hash" varchar(64) NOT NULL UNIQUE, "expires_at" timestamp_with_timezone_text NOT NULL, "used_at" timestamp_with_timezone_text NULL, "revoked_at" timestamp_with_timezone_text NULL, "created_at" timestamp_with_timezone_text NOT NULL, FOREIGN KEY ("user_id") REFERENCES "users" ("id") ON DELETE CASCADE );
CREATE INDEX "refresh_tokens_family_id" ON "refresh_tokens" ("family_id");
CREATE TABLE "api_keys" ( "id" uuid_text NOT NULL PRIMARY KEY, "user_id" uuid_text NOT NULL, "name" varchar(400) NOT NULL, "prefix" varchar(16) NOT NULL, "secret_hash" varchar(64) NOT NULL UNIQUE, "created_at" timestamp_with_timezone_text NOT NULL, FOREIGN KEY ("user_id") REFERENCES "users" ("id") ON DELETE CASCADE );
CREATE INDEX "api_keys_user_id_created_at_id" ON "api_keys" ("user_id", "created_at", "id");
